"""The papers' FLOPs of a model (torch side; the deploy report has the energies).

SpikeYOLO and EMS-YOLO count per conv FL = Cout·(Cin/g)·KH·KW·Hout·Wout per image and step,
padding taps included, on the re-parameterised graph (each RepConv / SepRepConv chain is one
3x3 conv; BN folded; pooling, upsampling and additions free). A conv on real values (the
encoding conv; EMS's -ee shortcut convs and head convs on currents) is a MAC, a conv on spikes
an AC (spikedet.deploy.paper_energy has both papers' energy formulas). The DFL decoder runs on
the host and is not counted.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from spikedet.train.instrument import profile_model


def paper_flops(model: nn.Module, imgsz: int) -> dict[str, Any]:
    """``{flops, mac_flops, ac_flops, layers: [{name, flops, input}]}`` per image per step."""
    net = copy.deepcopy(model).eval()
    if hasattr(net, "reparameterize"):
        net.reparameterize()
    prof = profile_model(net, imgsz, time_steps=1)
    modules = dict(net.named_modules())
    host = set(getattr(net, "host_modules", ()))
    layers = []
    for row in prof.rows:
        conv = modules.get(row.name)
        if not isinstance(conv, nn.Conv2d) or row.name.split(".")[0] in host:
            continue
        flops = int(conv.weight.numel()) * int(row.out_shape[-2]) * int(row.out_shape[-1])
        layers.append(
            {"name": row.name, "flops": flops, "input": "spikes" if row.spiking_input else "real"}
        )
    mac = sum(r["flops"] for r in layers if r["input"] == "real")
    ac = sum(r["flops"] for r in layers if r["input"] == "spikes")
    return {"flops": mac + ac, "mac_flops": mac, "ac_flops": ac, "layers": layers}
