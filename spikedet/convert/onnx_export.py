"""ONNX export of the FLOAT reference model, unrolled over its T time steps.

The ONNX file is what the torch model computes in eval mode (batch norm with its running
statistics, not folded), with the time loop of every neuron unrolled: T is a property of the
graph, the batch is dynamic. It is a reference for other runtimes, not a hardware format (the
hardware path is the NIR file, docs/semantics.md §2).

The neurons' ``forward`` runs a fused ``torch.autograd.Function`` whose Python loop the
TorchScript-based exporter cannot see through reliably; while exporting, every neuron instance
gets an inference-only forward built from plain torch ops (``round``, ``clamp``, ``gt``) that
computes the same numbers (docs/semantics.md §1):

    I-LIF: u_0 = α·x_0, u_t = β·(u_{t-1} − s_{t-1}) + α·x_t,  s_t = round_half_even(clamp(u_t, 0, D))
    LIF:   u_0 = x_0,   u_t = β·u_{t-1}·(1 − s_{t-1}) + x_t,  s_t = [u_t > V_th]

ONNX ``Round`` rounds half to even like ``torch.round``, so the integer spikes agree exactly
whenever the membranes do. The swap is per instance and undone on exit (the classes are not
touched, so other models in the process are unaffected).
"""

from __future__ import annotations

import contextlib
import os
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from spikedet.errors import SpikedetError
from spikedet.fileio import atomic_path
from spikedet.train.neurons import ILIF, LIF, to_binary_slots

INPUT_NAME = "images"
DEFAULT_OPSET = 17


def _ilif_unrolled(self: ILIF, x: Tensor) -> Tensor:
    """I-LIF over ``[T, ...]`` with plain torch ops (same operation order as the fused loop)."""
    spikes: list[Tensor] = []
    u = x[0] * self.alpha
    for t in range(x.shape[0]):
        if t:
            u = (u - spikes[-1]) * self.beta + x[t] * self.alpha
        spikes.append(torch.round(torch.clamp(u, 0.0, float(self.levels))))
    out = torch.stack(spikes)
    return to_binary_slots(out, self.levels) if self.spike_mode == "binary" else out


def _lif_unrolled(self: LIF, x: Tensor) -> Tensor:
    """EMS LIF over ``[T, ...]`` with plain torch ops (same operation order as the fused loop)."""
    spikes: list[Tensor] = []
    u = x[0]
    for t in range(x.shape[0]):
        if t:
            u = u * (1.0 - spikes[-1]) * self.beta + x[t]
        spikes.append(torch.gt(u, self.threshold).to(x.dtype))
    return torch.stack(spikes)


@contextlib.contextmanager
def unrolled_neurons(model: nn.Module) -> Iterator[int]:
    """Give every ILIF/LIF in ``model`` the plain-op forward above; yields how many were swapped."""
    swapped: list[nn.Module] = []
    try:
        for module in model.modules():
            if "forward" in vars(module):
                continue  # already patched (a shared instance) or a custom instance forward
            if isinstance(module, ILIF):
                module.forward = types.MethodType(_ilif_unrolled, module)
            elif isinstance(module, LIF):
                module.forward = types.MethodType(_lif_unrolled, module)
            else:
                continue
            swapped.append(module)
        yield len(swapped)
    finally:
        for module in swapped:
            del module.forward


def output_names(outputs: Any) -> list[str]:
    """Names of the flattened outputs: ``head.k.box``/``head.k.cls`` for (box, cls) pairs (as the
    NIR readouts are named), ``detect.k`` for a list of tensors (EMS-YOLO's anchor head)."""
    if isinstance(outputs, Tensor):
        return ["output"]
    names: list[str] = []
    for k, item in enumerate(outputs):
        if isinstance(item, Tensor):
            names.append(f"detect.{k}")
        elif isinstance(item, tuple | list) and len(item) == 2:
            names += [f"head.{k}.box", f"head.{k}.cls"]
        else:
            raise SpikedetError(
                f"model output {k} is neither a tensor nor a (box, cls) pair", "onnx"
            )
    return names


def flatten_outputs(outputs: Any) -> list[Tensor]:
    """The model's output tensors in ``output_names`` order."""
    if isinstance(outputs, Tensor):
        return [outputs]
    flat: list[Tensor] = []
    for item in outputs:
        flat += [item] if isinstance(item, Tensor) else list(item)
    return flat


class _Flat(nn.Module):
    """Wraps the model so the exported graph has a flat tuple of outputs."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(flatten_outputs(self.model(images)))


def _image_size(model: nn.Module, imgsz: int | None) -> int:
    size = getattr(model, "imgsz", None) if imgsz is None else imgsz
    if size is None or int(size) <= 0:
        raise SpikedetError(f"input size must be a positive integer, got {size}", "--imgsz")
    return int(size)


def export_onnx(
    model: nn.Module, path: str | os.PathLike, imgsz: int | None = None, opset: int = DEFAULT_OPSET
) -> dict[str, Any]:
    """Export ``model`` (float, eval mode) to ONNX at ``path`` atomically.

    Input ``images`` [batch, C, S, S] (dynamic batch; S = ``imgsz`` or ``model.imgsz``), one
    output per head tensor, each the time average over the T unrolled steps.
    Returns ``{"path", "inputs": {name: shape}, "outputs": {name: shape}, "opset"}`` with
    ``"batch"`` for the dynamic axis.
    """
    size = _image_size(model, imgsz)
    in_channels = int(getattr(model, "in_channels", 3))
    example = torch.rand(1, in_channels, size, size, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), unrolled_neurons(model):
            reference = model(example)  # also validates the size (a SpikedetError if bad)
            names = output_names(reference)
            shapes = {n: ["batch", *t.shape[1:]] for n, t in zip(names, flatten_outputs(reference))}
            dynamic = {n: {0: "batch"} for n in (INPUT_NAME, *names)}
            with atomic_path(path, suffix=".onnx") as tmp, warnings.catch_warnings():
                # The unrolled loop is fixed at T steps: that is the intent, not a tracer hazard.
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                torch.onnx.export(
                    _Flat(model),
                    (example,),
                    str(tmp),
                    input_names=[INPUT_NAME],
                    output_names=names,
                    dynamic_axes=dynamic,
                    opset_version=int(opset),
                    dynamo=False,
                    do_constant_folding=True,
                )
    except SpikedetError:
        raise
    except (RuntimeError, torch.onnx.errors.OnnxExporterError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpikedetError(f"ONNX export failed: {first}", type(model).__name__) from err
    finally:
        model.train(was_training)
    return {
        "path": str(Path(path)),
        "inputs": {INPUT_NAME: ["batch", in_channels, size, size]},
        "outputs": shapes,
        "opset": int(opset),
    }


def run_onnx(path: str | os.PathLike, x: Tensor) -> dict[str, Any]:
    """Run the ONNX file on ``x`` with onnxruntime (CPU); returns ``{output name: ndarray}``."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise SpikedetError("ONNX file not found", str(path))
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, {INPUT_NAME: x.detach().cpu().numpy()})
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own unexported types
        text = " ".join(str(err).split())[:300]
        raise SpikedetError(f"onnxruntime cannot run the file: {text}", str(path)) from err
    return dict(zip(names, values))


def check_onnx(model: nn.Module, path: str | os.PathLike, x: Tensor) -> float:
    """Max |ONNX − torch| over every output for input ``x`` (the model is run in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = model(x)
    finally:
        model.train(was_training)
    names = output_names(reference)
    got = run_onnx(path, x)
    if sorted(got) != sorted(names):
        raise SpikedetError(
            f"ONNX outputs {sorted(got)} differ from the model's {names}", str(path)
        )
    diff = 0.0
    for name, expected in zip(names, flatten_outputs(reference)):
        value = torch.from_numpy(got[name])
        if value.shape != expected.shape:
            raise SpikedetError(
                f"output {name} has shape {list(value.shape)}, torch {list(expected.shape)}",
                str(path),
            )
        diff = max(diff, float((value - expected).abs().max()))
    return diff
