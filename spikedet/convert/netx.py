"""Read lava-dl's netx HDF5 network format (``.net``) without torch or Lava (h5py + numpy).

The reading follows lava-dl 0.6.0 (repository lava-nc/lava-dl, commit
d825ac506eb9bb91ea2b945116fb45a40e775451): ``src/lava/lib/dl/netx/hdf5.py`` (``Network._create``,
``get_neuron_params``, ``create_input`` / ``create_conv`` / ``create_dense``),
``src/lava/lib/dl/netx/utils.py`` (``NetDict``, ``optimize_weight_bits``) and
``src/lava/lib/dl/netx/blocks/process.py``. The file is a chain ``layer/0 .. layer/n-1``; each
layer has ``type`` and ``shape`` (C, H, W) and, per type:

- ``input``: a LIF population driven by its bias (Lava sets ``bias_mant`` to the sample at run
  time, ``bias_exp`` 6); the file's scalar ``weight`` / ``bias`` are netx's input *transform*
  (kept as information, netx does not apply them to the neuron). Without ``neuron`` the
  layer only declares the shape of a spike input;
- ``conv``: torch-layout ``weight`` (Cout, Cin/groups, KH, KW[, 1]), ``bias`` (per channel),
  ``stride`` / ``padding`` / ``dilation`` (a scalar or an (H, W) pair), ``groups``. netx flips
  the kernel and transposes it to Lava's (Cout, X, Y, Cin); Lava convolves (flipping it
  back), so the file's weight is the cross-correlation kernel, exactly as torch uses it;
- ``flatten``: the next dense layer reads the previous map flattened in (C, H, W) order
  (netx: ``out.transpose([2, 1, 0]).flatten()`` of Lava's (X, Y, C) port);
- ``dense``: ``weight`` (out, in) (or flat), ``bias``; Lava's bit-accurate Dense applies
  netx's ``optimize_weight_bits`` (weights shifted left, ``weight_exp`` shifts the sum back),
  which ``dense_weight`` reproduces and checks to be exact.
- ``neuron``: ``type`` LOIHI / CUBA -> Lava LIF with du = iDecay - 1, dv = vDecay,
  vth = vThMant, bias_exp = 6 (``refDelay``, ``wgtExp``, ``theta``, ``tauRho``, ``scaleRho``
  are SLAYER training values that netx does not read).

Anything netx cannot build or that this reader does not support is one SpikedetError naming
the file and the layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import h5py
import numpy as np

from spikedet.convert.netx_dense import lava_dense_weight
from spikedet.errors import SpikedetError

NETX_BIAS_EXP = 6  # netx get_neuron_params: 'bias_exp': 6
NEURON_TYPES = ("LOIHI", "CUBA")
UNSUPPORTED = {
    "pool": "netx raises NotImplementedError for pool layers",
    "convT": "netx raises NotImplementedError for convT layers",
    "unpool": "netx raises NotImplementedError for unpool layers",
    "average": "netx raises NotImplementedError for average layers",
    "concat": "netx raises NotImplementedError for concat layers",
    "dense_rec": "recurrent dense layers are not supported",
    "dense_comp": "complex dense layers are not supported",
}


@dataclass
class NetxNeuron:
    """Lava LIF parameters of a layer (netx's mapping of the file's ``neuron`` group)."""

    du: int
    dv: int
    vth: int
    bias_exp: int = NETX_BIAS_EXP


@dataclass
class NetxLayer:
    """One layer that becomes a population (``input``, ``conv`` or ``dense``).

    ``weight`` is the exact integer cross-correlation kernel (Cout, Cin/groups, KH, KW); a dense
    layer's is (out, C, H, W) over the map it reads (``flatten``) or (out, N, 1, 1).
    ``bias`` is the per-channel bias mantissa (None: no bias).
    """

    index: int
    kind: str
    shape: tuple[int, int, int]
    neuron: NetxNeuron | None
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    weight_exp: int = 0  # dense: netx/Lava weight exponent (already applied to ``weight``)

    @property
    def name(self) -> str:
        return f"layer{self.index}"


@dataclass
class NetxNet:
    """The chain of a ``.net`` file: the input shape (C, H, W) and the layers in order."""

    path: str
    input_shape: tuple[int, int, int]
    layers: list[NetxLayer]
    input_transform: dict[str, int] = field(default_factory=dict)

    @property
    def input_layer(self) -> NetxLayer | None:
        """The bias-driven input population, or None for a net whose input is spikes."""
        return self.layers[0] if self.layers and self.layers[0].kind == "input" else None


class _Reader:
    def __init__(self, path: str):
        self.path = path

    def fail(self, what: str, index: int | None = None, kind: str | None = None) -> NoReturn:
        where = self.path if index is None else f"{self.path}: layer {index}"
        raise SpikedetError(what, f"{where} ({kind})" if kind else where)

    def dataset(self, group: h5py.Group, key: str, i: int, kind: str) -> np.ndarray:
        if key not in group or not isinstance(group[key], h5py.Dataset):
            self.fail(f"missing dataset {key!r}", i, kind)
        value = np.asarray(group[key][()])
        if value.dtype.kind not in "biuf" or value.size == 0:
            self.fail(f"{key!r} is not a non-empty numeric array", i, kind)
        if not np.all(np.isfinite(value)):
            self.fail(f"{key!r} has NaN or infinite values", i, kind)
        return value

    def integers(self, group: h5py.Group, key: str, i: int, kind: str) -> np.ndarray:
        """A dataset of exact integers (netx casts with ``astype(int)``, which would silently
        truncate a fractional weight: refused here)."""
        value = self.dataset(group, key, i, kind)
        if np.any(value != np.round(value)):
            self.fail(f"{key!r} holds non-integer values (Loihi weights are integers)", i, kind)
        return value.astype(np.int64)

    def scalar(self, group: h5py.Group, key: str, i: int, kind: str) -> int:
        value = self.integers(group, key, i, kind)
        if value.size != 1:
            self.fail(f"{key!r} must be one value, got shape {value.shape}", i, kind)
        return int(value.reshape(-1)[0])

    def pair(self, group: h5py.Group, key: str, i: int, kind: str, default: int) -> tuple:
        """netx ``expand``: a scalar applies to both axes; a pair is (H, W) as stored."""
        if key not in group:
            return (default, default)
        value = self.integers(group, key, i, kind).reshape(-1)
        if value.size == 1:
            value = np.repeat(value, 2)
        if value.size != 2:
            self.fail(f"{key!r} must be a scalar or a pair, got {value.size} values", i, kind)
        return int(value[0]), int(value[1])

    def layer_type(self, group: h5py.Group, i: int) -> str:
        if "type" not in group or not isinstance(group["type"], h5py.Dataset):
            self.fail("missing dataset 'type'", i)
        raw = group["type"][()]
        if getattr(raw, "ndim", 0):
            if raw.size < 1:
                self.fail("empty 'type'", i)
            raw = raw.reshape(-1)[0]
        if not isinstance(raw, (bytes, str)):
            self.fail(f"'type' is not a string, got {type(raw).__name__}", i)
        try:
            return raw.decode("ascii") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            self.fail("'type' is not an ASCII string", i)

    def shape(self, group: h5py.Group, i: int, kind: str) -> tuple[int, int, int]:
        shape = self.integers(group, "shape", i, kind).reshape(-1)
        if shape.size == 1:
            shape = np.array([shape[0], 1, 1])
        if shape.size != 3 or shape.min() < 1:
            self.fail(f"shape must be (C, H, W) or (N,) of positive sizes, got {shape}", i, kind)
        return tuple(int(v) for v in shape)  # type: ignore[return-value]

    def neuron(self, group: h5py.Group, i: int, kind: str) -> NetxNeuron:
        if "neuron" not in group or not isinstance(group["neuron"], h5py.Group):
            what = "has no 'neuron' group (netx's default integrator for dense layers is not"
            self.fail(f"{what} supported)" if kind == "dense" else "has no 'neuron' group", i, kind)
        cfg = group["neuron"]
        ntype = self.layer_type(cfg, i)
        if ntype not in NEURON_TYPES:
            self.fail(f"neuron type {ntype!r} is not supported (only LOIHI / CUBA LIF)", i, kind)
        if "messageBits" in cfg and self.scalar(cfg, "messageBits", i, kind) != 0:
            self.fail("graded spikes (messageBits > 0) are not supported", i, kind)
        du = self.scalar(cfg, "iDecay", i, kind) - 1
        dv = self.scalar(cfg, "vDecay", i, kind)
        vth = self.scalar(cfg, "vThMant", i, kind)
        for what, value, top in (("iDecay - 1", du, 4095), ("vDecay", dv, 4095)):
            if not 0 <= value <= top:
                self.fail(f"{what} = {value} is not a 12-bit decay (0..4095)", i, kind)
        if not 0 <= vth < 1 << 17:
            self.fail(f"vThMant = {vth} is not a 17-bit threshold mantissa", i, kind)
        return NetxNeuron(du=du, dv=dv, vth=vth)

    def bias(self, group: h5py.Group, i: int, kind: str, channels: int) -> np.ndarray | None:
        if "bias" not in group:
            return None
        bias = self.integers(group, "bias", i, kind).reshape(-1)
        if bias.size != channels:
            self.fail(f"bias has {bias.size} values for {channels} channels", i, kind)
        if bias.min() < -(1 << 12) or bias.max() >= 1 << 12:
            what = f"bias {bias.min()}..{bias.max()} is not a 13-bit signed mantissa"
            self.fail(what, i, kind)
        return bias

    def conv(self, group: h5py.Group, i: int, src: tuple[int, int, int]) -> NetxLayer:
        kind = "conv"
        shape, neuron = self.shape(group, i, kind), self.neuron(group, i, kind)
        weight = self.integers(group, "weight", i, kind)
        if weight.ndim == 5 and weight.shape[4] == 1:  # netx: weight.reshape(weight.shape[:4])
            weight = weight[..., 0]
        if weight.ndim != 4:
            self.fail(f"conv weight must be (Cout, Cin, KH, KW[, 1]), got {weight.shape}", i, kind)
        groups = self.scalar(group, "groups", i, kind) if "groups" in group else 1
        stride = self.pair(group, "stride", i, kind, 1)
        padding = self.pair(group, "padding", i, kind, 0)
        dilation = self.pair(group, "dilation", i, kind, 1)
        cout, cin_g, kh, kw = weight.shape
        if groups < 1 or cout % groups or cin_g * groups != src[0]:
            what = f"weight {weight.shape} with groups={groups} does not read {src[0]} channels"
            self.fail(what, i, kind)
        if min(stride) < 1 or min(padding) < 0 or min(dilation) < 1:
            self.fail(f"bad stride {stride}, padding {padding} or dilation {dilation}", i, kind)
        hw = [
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(src[1:], (kh, kw), stride, padding, dilation)
        ]
        if (cout, *hw) != shape:
            what = f"declared shape {shape}, but the conv of the {src} input gives {(cout, *hw)}"
            self.fail(what, i, kind)
        bias = self.bias(group, i, kind, cout)
        return NetxLayer(i, kind, shape, neuron, weight, bias, stride, padding, dilation, groups)

    def dense(self, group: h5py.Group, i: int, src: tuple[int, int, int]) -> NetxLayer:
        kind = "dense"
        shape = self.shape(group, i, kind)
        n_out, n_in = int(np.prod(shape)), int(np.prod(src))
        neuron = self.neuron(group, i, kind)
        if "weight" in group and isinstance(group["weight"], h5py.Group):
            self.fail("complex (real / imag) dense weights are not supported", i, kind)
        if "delay" in group:
            self.fail("synaptic delays are not supported", i, kind)
        weight = self.integers(group, "weight", i, kind)
        if weight.ndim == 1 and weight.size % n_out == 0:
            weight = weight.reshape(n_out, -1)  # netx: weight.reshape(shape[0], -1)
        if weight.ndim != 2 or weight.shape != (n_out, n_in):
            what = f"weight {weight.shape} does not map the {n_in} inputs to {n_out} neurons"
            self.fail(what, i, kind)
        try:
            effective, weight_exp = lava_dense_weight(weight)
        except ValueError as err:
            self.fail(str(err), i, kind)
        bias = self.bias(group, i, kind, n_out)
        kernel = effective.reshape(n_out, *src)  # (C, H, W) flattening order, as netx's
        layer = NetxLayer(i, kind, (n_out, 1, 1), neuron, kernel, bias, weight_exp=weight_exp)
        return layer

    def read(self) -> NetxNet:
        try:
            f = h5py.File(self.path, "r")
        except (OSError, ValueError) as err:
            raise SpikedetError(f"not an HDF5 netx file: {err}", self.path) from None
        with f:
            if "layer" not in f or not isinstance(f["layer"], h5py.Group) or not len(f["layer"]):
                self.fail("no 'layer' group with layers in it")
            count = len(f["layer"])
            for i in range(count):
                if str(i) not in f["layer"]:
                    self.fail(f"layers must be numbered 0..{count - 1}; layer {i} is missing")
            groups = [f["layer"][str(i)] for i in range(count)]
            try:
                return self.chain(groups)
            except (OSError, KeyError) as err:  # h5py on damaged data inside a valid file
                raise SpikedetError(f"unreadable HDF5 data: {err}", self.path) from None

    def chain(self, groups: list[h5py.Group]) -> NetxNet:
        layers: list[NetxLayer] = []
        transform: dict[str, int] = {}
        first = groups[0]
        kind0 = self.layer_type(first, 0)
        if kind0 != "input":
            self.fail(f"the first layer must be 'input', got {kind0!r}", 0, kind0)
        shape = self.shape(first, 0, "input")
        for key in ("weight", "bias"):
            if key in first:
                transform[key] = self.scalar(first, key, 0, "input")
        if "neuron" in first:
            neuron = self.neuron(first, 0, "input")
            if neuron.du != 4095:  # docs/semantics.md §3.6: only then is the bias an input
                what = f"input layer iDecay = {neuron.du + 1}; only 4096 (no current memory)"
                self.fail(f"{what} lets the sample be presented as the graph input", 0, "input")
            layers.append(NetxLayer(0, "input", shape, neuron))
        current, flat = shape, False
        for i, group in enumerate(groups[1:], start=1):
            kind = self.layer_type(group, i)
            if kind in UNSUPPORTED:
                self.fail(UNSUPPORTED[kind], i, kind)
            if kind == "input":
                self.fail("only the first layer may be an input layer", i, kind)
            if kind == "flatten":
                if flat or not layers and not current:
                    self.fail("flatten must follow a conv or input layer", i, kind)
                if layers and layers[-1].kind == "dense":
                    self.fail("flatten after a dense layer (netx cannot connect it)", i, kind)
                flat = True
                continue
            if kind == "conv":
                if flat or (layers and layers[-1].kind == "dense"):
                    self.fail("a conv layer cannot read a flattened or dense layer", i, kind)
                layer = self.conv(group, i, current)
            elif kind == "dense":
                prev_map = not layers or layers[-1].kind != "dense"
                if prev_map and not flat:
                    self.fail("a dense layer after a map needs a 'flatten' layer", i, kind)
                layer = self.dense(group, i, current)
            else:
                self.fail(f"unknown layer type {kind!r}", i, kind)
            layers.append(layer)
            current, flat = layer.shape, False
        if flat:
            self.fail("the net ends with a flatten layer", len(groups) - 1, "flatten")
        if not [layer for layer in layers if layer.kind != "input"]:
            self.fail("the net has no conv or dense layer")
        return NetxNet(self.path, shape, layers, transform)


def read_netx(path: str | Path) -> NetxNet:
    """Parse and validate a netx ``.net`` file (see the module docstring)."""
    path = str(path)
    if not Path(path).is_file():
        raise SpikedetError("no such file", path)
    return _Reader(path).read()
