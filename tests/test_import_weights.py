"""`spikedet import-weights`: the four released configurations, built in the authors' layouts
(``official_layouts`` / ``official_ems_layout``), imported without running the pickle, and
compared bit for bit with the official networks' own forward passes."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

from spikedet.cli.main import main
from spikedet.convert.official_import import import_official, imported_model
from spikedet.train.checkpoint import load_checkpoint, model_from_state
from tests.model_helpers import run_with_spikes
from tests.official_ems_layout import build_resnet34_cat
from tests.official_layouts import build_spikeyolo, official_modules


def wake(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics (so every layer spikes at several levels), ultralytics' BN eps
    1e-3 on BatchNorm2d (initialize_weights), values rounded to fp16 like a released file."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.5 + 0.3)
            if type(m) is nn.BatchNorm2d:
                m.eps = 1e-3
    return net.eval().half().float()


def save(path, net: nn.Module, stripped: bool, extra: dict | None = None, **top) -> None:
    """ultralytics / yolov5 layouts: unstripped = model and EMA (both fp16 for ultralytics)
    plus optimizer state; stripped (strip_optimizer) = model <- EMA in fp16, the rest None."""
    ema = copy.deepcopy(net).half()
    if stripped:
        state = {"epoch": -1, "best_fitness": None, "model": ema, "ema": None, "updates": None,
                 "optimizer": None, **top}  # fmt: skip
    else:
        stale = copy.deepcopy(net).half()  # the raw model differs from the EMA
        with torch.no_grad():
            for p in stale.parameters():
                p.add_(1.0)
        opt = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.01}]}
        state = {"epoch": 299, "best_fitness": 0.45, "model": stale, "ema": ema, "updates": 7,
                 "optimizer": opt, **top}  # fmt: skip
    state.update(extra or {})
    with official_modules():
        torch.save(state, path)


def spikeyolo(scale, neuron="coco", p5=1, seed=0):
    torch.manual_seed(seed)
    return wake(build_spikeyolo(scale, 2 if neuron == "gen1" else 80, neuron, p5), seed)


RELEASED = {
    # name: (builder, stripped, train_args, expected zoo model, input)
    "spikeyolo-s (COCO 23M, T=1, D=4)": (
        lambda: spikeyolo("s"), True, {"imgsz": 640}, "spikeyolo-s", (1, 3, 64, 64)),
    "spikeyolo-l (COCO 69M, T=1, D=4)": (
        lambda: spikeyolo("l", p5=2), False, {"imgsz": 640}, "spikeyolo-l", (1, 3, 64, 64)),
    "spikeyolo-s Gen1 (23M, T=2, D=4)": (
        lambda: spikeyolo("s", "gen1"), True, {"imgsz": 320}, "spikeyolo-s-gen1",
        (2, 2, 3, 64, 64)),
    "EMS-ResNet34 COCO (resnet34-cat)": (
        lambda: wake(build_resnet34_cat(80, 5)), False, None, "ems-res34-cat", (1, 5, 3, 64, 64)),
}  # fmt: skip


def official_out(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [o.contiguous() for o in net(x)]


def our_out(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Ours, arranged like the official training-mode outputs."""
    with torch.no_grad():
        outs = model(x, layout="BT") if x.dim() == 5 else model(x)
    if isinstance(outs[0], tuple):  # SpikeYOLO: cat(box, cls) per stride
        return [torch.cat(o, 1) for o in outs]
    return [  # EMS: [B, na*no, H, W] -> [B, na, H, W, no]
        o.view(o.shape[0], 3, -1, *o.shape[-2:]).permute(0, 1, 3, 4, 2).contiguous() for o in outs
    ]


@pytest.mark.parametrize("release", list(RELEASED))
def test_released_configuration_imports_exactly(tmp_path, release):
    build, stripped, args, zoo, shape = RELEASED[release]
    net = build()
    src = tmp_path / "official.pt"
    save(src, net, stripped, **({"train_args": args} if args else {}))
    state, plan, lines = import_official(src)
    assert state["config"]["name"] == zoo
    assert state["imported_from"]["weights"] == ("model" if stripped else "ema")
    # every tensor accounted for: ours all filled, theirs all used (map_state raises otherwise)
    model = imported_model(state)
    assert set(state["model"]) == set(model.state_dict())
    n_official = sum(1 for k in net.state_dict() if k != "model.15.anchors")
    assert len(state["model"]) == n_official + len(plan.derived)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    ref, got = official_out(net, x), our_out(model, x)
    assert all(torch.equal(r, g) for r, g in zip(ref, got, strict=True))
    assert all(r.abs().sum() > 0 for r in ref)
    # the CLI writes a weights_only checkpoint that loads like any other
    out = tmp_path / "run" / "best.pt"
    assert main(["import-weights", str(src), "--out", str(out)]) == 0
    reloaded = model_from_state(load_checkpoint(out), out)
    assert all(torch.equal(r, g) for r, g in zip(ref, our_out(reloaded, x)))


def test_imported_spikeyolo_spikes_at_several_levels(tmp_path):
    save(tmp_path / "s.pt", spikeyolo("s"), True)
    model = imported_model(import_official(tmp_path / "s.pt")[0])
    _, spikes = run_with_spikes(model, torch.rand(1, 3, 64, 64))
    levels = torch.cat([s.flatten() for s in spikes.values()]).unique().tolist()
    assert levels == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_l_layer25_ratio_comes_from_the_tensors(tmp_path):
    save(tmp_path / "l.pt", spikeyolo("l", p5=2), True)
    state, plan, _ = import_official(tmp_path / "l.pt")
    assert state["config"]["p5_ratio"] == 2
    assert any("layer 25 ratio r=2" in n and "yaml says 1" in n for n in plan.notes)
    save(tmp_path / "l1.pt", spikeyolo("l", p5=1), True)  # trained with the shipped yaml
    assert import_official(tmp_path / "l1.pt")[0]["config"]["p5_ratio"] == 1


def test_gen1_uses_the_gen1_neuron_and_ems_t_override(tmp_path):
    save(tmp_path / "g.pt", spikeyolo("s", "gen1"), True)
    state = import_official(tmp_path / "g.pt", T=4)[0]
    assert (state["config"]["neuron"], state["config"]["T"]) == ("gen1", 4)
    assert state["train_config"]["dataset"] == "gen1"
    save(tmp_path / "e.pt", wake(build_resnet34_cat(80, 4)), True)
    assert import_official(tmp_path / "e.pt", T=4)[0]["config"]["T"] == 4  # the paper's T


SENTINEL_CODE = "import pathlib; pathlib.Path({!r}).write_text('ran')"


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (exec, (SENTINEL_CODE.format(str(self.path)),))


class _EvilSystem:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickle_runs_nothing(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    extra = {"train_args": {"imgsz": 640, "x": _Evil(sentinel)}, "date": _EvilSystem(sentinel)}
    save(path, spikeyolo("s"), True, extra)
    # torch's safe loader refuses the file outright; ours imports the weights, runs nothing
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    state, _, _ = import_official(path)
    assert state["config"]["name"] == "spikeyolo-s"
    assert not sentinel.exists()
    # a file that is nothing but a payload: refused, still nothing ran
    with official_modules():
        torch.save({"model": _Evil(sentinel), "ema": _EvilSystem(sentinel)}, tmp_path / "e2.pt")
    assert main(["import-weights", str(tmp_path / "e2.pt"), "--out", str(tmp_path / "o.pt")]) == 2
    assert not sentinel.exists() and not (tmp_path / "o.pt").exists()
    # and loading it the usual way would have run it (the reason for all this)
    cmd = f"import torch; torch.load({str(tmp_path / 'e2.pt')!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", cmd], capture_output=True, timeout=120)
    assert sentinel.exists()


@pytest.mark.parametrize("case", ["other model", "truncated", "does not fit", "spikedet"])
def test_bad_checkpoints_fail_in_one_line(tmp_path, capsys, case):
    src, out = tmp_path / "bad.pt", tmp_path / "run" / "best.pt"
    argv = ["import-weights", str(src), "--out", str(out)]
    if case == "other model":  # an ultralytics DetectionModel that is not SpikeYOLO
        with official_modules():
            from tests.official_layouts import DetectionModel

            layer = nn.Conv2d(3, 8, 3)
            layer.i, layer.f, layer.type = 0, -1, "Conv"
            torch.save({"model": DetectionModel({"nc": 1}, [layer], {0: "a"}).half()}, src)
        expect = "neither a SpikeYOLO"
    elif case == "truncated":
        save(tmp_path / "good.pt", spikeyolo("s"), True)
        data = (tmp_path / "good.pt").read_bytes()
        src.write_bytes(data[: len(data) // 2])
        expect = "not a readable torch zip checkpoint"
    elif case == "does not fit":
        save(src, spikeyolo("s"), True)
        argv += ["--model", "spikeyolo-n"]
        expect = "official tensor model.1.encode_conv.weight (64x3x7x7) does not fit"
    else:
        from spikedet.train.checkpoint import save_checkpoint

        save_checkpoint(src, {"config": {}, "model": {}})
        expect = "already a spikedet checkpoint"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and str(src) in err[0], err
    assert not out.exists() and not out.parent.exists()


class _Forged:
    """A tensor record whose view reaches far past its 4-element storage."""

    def __reduce__(self):
        storage = torch.zeros(4).untyped_storage()
        typed = torch.storage.TypedStorage(
            wrap_storage=storage, dtype=torch.float32, _internal=True
        )
        return (torch._utils._rebuild_tensor_v2, (typed, 0, (10**6,), (1,), False, {}))


def test_unpickler_checks_tensor_records(tmp_path):
    from spikedet.convert.official_ckpt import read_official
    from spikedet.errors import SpikedetError

    torch.save({"model": _Forged()}, tmp_path / "forged.pt")
    with pytest.raises(SpikedetError, match="exceeds its storage"):
        read_official(tmp_path / "forged.pt")
    torch.save({"w": torch.ones(3)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(SpikedetError, match="zip"):
        read_official(tmp_path / "legacy.pt")
    torch.save({"w": torch.arange(3.0), "d": {"k": [1, 2.5, "x"]}}, tmp_path / "plain.pt")
    top = read_official(tmp_path / "plain.pt").top
    assert torch.equal(top["w"], torch.arange(3.0)) and top["d"] == {"k": [1, 2.5, "x"]}
