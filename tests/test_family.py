"""One dispatch for both detector families: loss and post-processing by head type."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spikedet.anchor_decode import postprocess_anchor
from spikedet.detection import postprocess
from spikedet.errors import SpikedetError
from spikedet.train.anchor_loss import AnchorLoss
from spikedet.train.family import family_of, make_loss, nms_defaults, postprocess_outputs
from spikedet.train.loss import DetectionLoss
from spikedet.train.models.ems import build_ems
from spikedet.train.models.registry import build_model

TARGETS = torch.tensor([[0, 1, 8.0, 10.0, 40.0, 44.0], [1, 0, 30.0, 30.0, 50.0, 60.0]])


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"dfl": build_model("spikeyolo-pico").eval(), "anchor": build_ems("ems-pico").eval()}


def test_family_of(models):
    assert family_of(models["dfl"]) == "dfl"
    assert family_of(models["anchor"]) == "anchor"
    assert nms_defaults(models["dfl"]) == (0.001, 0.7)
    assert nms_defaults(models["anchor"]) == (0.001, 0.6)
    with pytest.raises(SpikedetError):
        family_of(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("family", ["dfl", "anchor"])
def test_make_loss_dispatch(models, family):
    model = models[family]
    crit = make_loss(model)
    assert isinstance(crit, AnchorLoss if family == "anchor" else DetectionLoss)
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    loss, parts = crit(model(images), TARGETS)
    assert torch.isfinite(loss) and loss.requires_grad
    assert set(parts) == ({"box", "obj", "cls"} if family == "anchor" else {"box", "cls", "dfl"})


@pytest.mark.parametrize("family", ["dfl", "anchor"])
def test_postprocess_outputs_dispatch(models, family):
    model = models[family]
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    outputs = model(images)  # still attached to the graph: the dispatch must detach
    dets = postprocess_outputs(model, outputs, conf_thres=0.001, iou_thres=0.6, max_det=50)
    if family == "anchor":
        direct = postprocess_anchor(
            [o.detach().numpy() for o in outputs],
            model.strides,
            model.detect.anchors.numpy(),
            conf_thres=0.001,
            iou_thres=0.6,
            max_det=50,
        )
    else:
        direct = postprocess(
            [b.detach().numpy() for b, _ in outputs],
            [c.detach().numpy() for _, c in outputs],
            model.strides,
            model.reg_max,
            conf_thres=0.001,
            iou_thres=0.6,
            max_det=50,
        )
    assert len(dets) == 2
    assert sum(len(d) for d in dets) > 0  # untrained heads still score above 0.001
    for got, want in zip(dets, direct):
        assert got.shape[1] == 6 and len(got) <= 50
        np.testing.assert_array_equal(got, want)
        assert set(np.unique(got[:, 5]).tolist()) <= set(range(model.nc))


def test_postprocess_outputs_rejects_mismatched_outputs(models):
    ems_outputs = models["anchor"](torch.rand(1, 3, 64, 64))
    with pytest.raises(SpikedetError):
        postprocess_outputs(models["dfl"], ems_outputs, 0.001, 0.7)
    with pytest.raises(SpikedetError):
        postprocess_outputs(models["anchor"], ems_outputs[:1], 0.001, 0.6)
    dfl_outputs = models["dfl"](torch.rand(1, 3, 64, 64))
    with pytest.raises(SpikedetError):
        postprocess_outputs(models["anchor"], dfl_outputs, 0.001, 0.6)
