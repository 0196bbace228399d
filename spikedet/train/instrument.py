"""Per-layer instrumentation of spiking models: spikes, firing rates, MACs, theoretical energy.

Works on any model built from ``spikedet.train.neurons`` (SpikeYOLO with ``ILIF``, EMS-YOLO with
``LIF``) whose convs are ``nn.Conv2d`` on time-folded batches. One forward pass with hooks:

- every neuron: spike count Σ s (for I-LIF, the integer counts, i.e. binary spikes of the
  thermometer code) and firing rate fr = mean(s) over (T, B, neurons). For I-LIF fr lies in
  [0, D] and includes D, as SpikeYOLO defines it
  (its energy accounting, Luo et al., ECCV 2024, arXiv 2407.20708);
- every conv / linear: MACs per image per time step by the NeuroBench rule: only real
  connections count (taps that land on zero padding do not), bias excluded;
- a conv reads spikes when its input tensor is a neuron output (or a max-pool / upsample of
  one); then its input firing rate is the mean of that input.

Theoretical energy (45 nm, EMS-YOLO Eq. 6; SpikeYOLO's form for T = 1, and its "x T" rule):

    E_SNN = T · ( E_MAC · Σ_{conv reads real values} MACs + E_AC · Σ_{conv reads spikes} MACs·fr )
    E_ANN = E_MAC · Σ_all MACs            (the same network run once, every op a MAC)

MACs are per time step: a conv does the same work at every step, so T enters only as the factor
above and shape/MAC passes may run with T = 1. The first (encoding) conv is the only real-valued
conv of SpikeYOLO; EMS-YOLO's half-width shortcut convs and both families' detect convs also read
real values and are counted as MACs, as EMS-YOLO's Eq. 6 prescribes for "non-spike convs".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikedet.errors import SpikedetError
from spikedet.train.neurons import ILIF, LIF

NEURON_TYPES: tuple[type[nn.Module], ...] = (ILIF, LIF)
# Modules whose output is spikes whenever their input is (they select or copy values).
_SPIKE_PRESERVING: tuple[type[nn.Module], ...] = (nn.MaxPool2d, nn.MaxPool3d, nn.Upsample)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


@dataclass
class LayerRow:
    """One leaf module that ran. ``rate``: a neuron's output firing rate, or the input firing
    rate of a conv that reads spikes (None for a conv on real values and for other modules)."""

    name: str
    type: str
    out_shape: tuple[int, ...]  # per image and step, e.g. (C, H, W)
    params: int
    macs: int = 0  # per image per time step
    spiking_input: bool = False
    rate: float | None = None
    spikes: float | None = None  # neurons: Σ s over the whole pass (all T and B)
    neurons: int = 0  # neurons: units per image per step
    energy_pj: float = 0.0  # this layer's share of E_SNN per image


@dataclass
class ModelProfile:
    """Rows in execution order and totals; energies per image (pJ)."""

    rows: list[LayerRow]
    T: int
    imgsz: int
    params: int
    macs: int  # all conv/linear MACs per image per time step
    mac_macs: int  # MACs of convs on real-valued inputs (per step)
    sops: float  # synaptic ops per image: T · Σ MACs·fr over convs on spikes
    snn_energy_pj: float
    ann_energy_pj: float
    e_mac_pj: float
    e_ac_pj: float
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def neuron_rows(self) -> list[LayerRow]:
        return [r for r in self.rows if r.neurons > 0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row in d["rows"]:
            row["out_shape"] = list(row["out_shape"])
        return d


def real_connections(conv: nn.Conv2d, in_hw: tuple[int, int]) -> int:
    """MACs of one image through ``conv`` at input size ``in_hw``, zero-padding taps excluded.

    The taps that land inside the image do not depend on channels, so a 1-channel all-ones conv
    with the same geometry counts them; each counts Cout · Cin/groups MACs.
    """
    if conv.padding_mode != "zeros":  # reflect/circular padding taps carry real data
        padding: Any = 0
        ones = torch.ones(1, 1, in_hw[0] + 2 * conv.padding[0], in_hw[1] + 2 * conv.padding[1])
    else:
        padding = conv.padding
        ones = torch.ones(1, 1, *in_hw)
    kernel = torch.ones(1, 1, *conv.kernel_size)
    taps = F.conv2d(ones, kernel, None, conv.stride, padding, conv.dilation)
    per_channel = int(round(float(taps.sum())))
    return per_channel * conv.out_channels * (conv.in_channels // conv.groups)


class _Recorder:
    """Forward hooks collecting one ``LayerRow`` per leaf module (accumulated over calls)."""

    def __init__(self, model: nn.Module):
        self.rows: dict[str, LayerRow] = {}
        self.rate_sums: dict[str, float] = {}
        self.rate_counts: dict[str, int] = {}
        self.spike_ptrs: set[int] = set()
        self.keep: list[Tensor] = []  # keeps spike tensors alive so data_ptrs are not reused
        self.handles: list[Any] = []
        for name, module in model.named_modules():
            is_leaf = next(iter(module.children()), None) is None
            if isinstance(module, _CONTAINERS):  # an empty container computes nothing
                continue
            if is_leaf or isinstance(module, NEURON_TYPES):
                self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            if not isinstance(output, Tensor):
                return
            inp = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
            row = self.rows.get(name)
            if row is None:
                params = sum(p.numel() for p in module.parameters(recurse=False))
                # EMS's per-step StepConv2d is a Conv2d (same weights, per-step schedule)
                kind = "Conv2d" if isinstance(module, nn.Conv2d) else type(module).__name__
                row = LayerRow(name, kind, (), int(params))
                self.rows[name] = row
            spiking_in = inp is not None and inp.data_ptr() in self.spike_ptrs
            if isinstance(module, NEURON_TYPES):
                # [T, B, ...] in and out
                row.out_shape = tuple(output.shape[2:])
                row.neurons = int(output[0, 0].numel())
                row.spikes = (row.spikes or 0.0) + float(output.double().sum())
                self._add_rate(name, float(output.double().sum()), output.numel())
                self._mark_spikes(output)
            elif isinstance(module, (nn.Conv2d, nn.Linear)) and inp is not None:
                row.out_shape = tuple(output.shape[1:])
                if isinstance(module, nn.Conv2d):
                    macs = real_connections(module, (inp.shape[-2], inp.shape[-1]))
                else:
                    macs = module.in_features * module.out_features * (inp.numel() // inp.shape[-1])
                    macs //= max(1, inp.shape[0])
                row.macs = macs
                row.spiking_input = spiking_in
                if spiking_in:
                    self._add_rate(name, float(inp.double().sum()), inp.numel())
            else:
                row.out_shape = tuple(output.shape[1:])
                if spiking_in and isinstance(module, _SPIKE_PRESERVING):
                    self._mark_spikes(output)

        return record

    def _mark_spikes(self, t: Tensor) -> None:
        self.keep.append(t)
        self.spike_ptrs.add(t.data_ptr())

    def _add_rate(self, name: str, total: float, count: int) -> None:
        self.rate_sums[name] = self.rate_sums.get(name, 0.0) + total
        self.rate_counts[name] = self.rate_counts.get(name, 0) + count
        self.rows[name].rate = self.rate_sums[name] / self.rate_counts[name]

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.keep.clear()


def profile_model(
    model: nn.Module,
    imgsz: int,
    x: Tensor | None = None,
    time_steps: int | None = None,
    e_mac_pj: float | None = None,
    e_ac_pj: float | None = None,
    seed: int = 0,
) -> ModelProfile:
    """Run one instrumented forward pass (eval mode, no grad) and return per-layer rows.

    ``x``: the input (``[B, C, S, S]`` repeated T times by the model, or ``[T, B, C, S, S]``);
    by default a seeded uniform image ``[time_steps or model.T, 1, C, imgsz, imgsz]``. Firing
    rates are those of this input. Energies use the cmos45nm profile unless given.
    """
    if e_mac_pj is None or e_ac_pj is None:
        from spikedet.deploy.profiles import load_profile

        cmos = load_profile("cmos45nm")
        e_mac_pj = cmos.e_mac_pj if e_mac_pj is None else e_mac_pj
        e_ac_pj = cmos.e_ac_pj if e_ac_pj is None else e_ac_pj
    model_t = int(getattr(model, "T", 1))
    channels = int(getattr(model, "in_channels", 3))
    if x is None:
        steps = model_t if time_steps is None else int(time_steps)
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(steps, 1, channels, imgsz, imgsz, generator=gen)
    if x.dim() not in (4, 5):
        raise SpikedetError(f"input must be 4-D or 5-D, got {list(x.shape)}", "profile_model")
    steps = int(x.shape[0]) if x.dim() == 5 else model_t
    images = int(x.shape[1]) if x.dim() == 5 else int(x.shape[0])
    recorder = _Recorder(model)
    was_training = model.training
    # Rates are defined on integer spike counts (fr includes D); an I-LIF switched to the binary
    # thermometer mode is profiled in integer mode (same numbers) and switched back.
    modes = {
        m: m.spike_mode for m in model.modules() if isinstance(getattr(m, "spike_mode", None), str)
    }
    try:
        model.eval()
        for module in modes:
            module.spike_mode = "integer"
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for module, mode in modes.items():
            module.spike_mode = mode
        recorder.close()
    rows = list(recorder.rows.values())
    mac_macs = 0
    sops = 0.0
    for row in rows:
        if row.macs == 0:
            continue
        if row.spiking_input:
            row_sops = steps * row.macs * (row.rate or 0.0)
            row.energy_pj = e_ac_pj * row_sops
            sops += row_sops
        else:
            row.energy_pj = e_mac_pj * steps * row.macs
            mac_macs += row.macs
    for row in rows:
        if row.spikes is not None:
            row.spikes /= images  # per image (all T steps)
    macs = sum(r.macs for r in rows)
    return ModelProfile(
        rows=rows,
        T=steps,
        imgsz=int(x.shape[-1]),
        params=int(sum(p.numel() for p in model.parameters())),
        macs=int(macs),
        mac_macs=int(mac_macs),
        sops=float(sops),
        snn_energy_pj=float(sum(r.energy_pj for r in rows)),
        ann_energy_pj=float(e_mac_pj * macs),
        e_mac_pj=float(e_mac_pj),
        e_ac_pj=float(e_ac_pj),
        extras={"images": images},
    )
