"""The two papers' own energy accounting, from a deployed run's activity (no torch).

Both count per conv the FLOPs of the (re-parameterised) graph, FL = Cout·(Cin/g)·KH·KW·Hout·Wout
per image and step (padding taps included), at 45 nm: E_MAC = 4.6 pJ, E_AC = 0.9 pJ
(Horowitz, ISSCC 2014, as both papers use). They differ in how T enters:

- SpikeYOLO (Luo et al., ECCV 2024, arXiv 2407.20708; maintainers in BICLab/SpikeYOLO issues
  #28, #31): E = E_MAC·FL_conv1 + E_AC·T·Σ_{n≥2} FL_n·fr_n, fr_n the mean *integer* output of
  the I-LIF feeding conv n (in [0, D], D included, T not); the first conv once; pooling,
  upsampling and additions free.
- EMS-YOLO (Su et al., ICCV 2023, arXiv 2307.11411, Eq. 6, quoted in BICLab/EMS-YOLO issue
  #12): E = T·Σ_b (fr_b·E_AC·OP_AC,b + E_MAC·OP_MAC,b), OP_MAC the convs on real values (the
  encoding conv), OP_AC the convs on spikes, fr the firing rate of their input spikes.

Here "encoding" synapses (reading the input) are the MAC convs; every other conv synapse reads a
population, whose measured firing rate (``PopulationActivity.firing_rate``) is fr.
"""

from __future__ import annotations

from typing import Any

from spikedet.deploy.energy_activity import Activity

FORMULAS = {
    "spikeyolo": "E = E_MAC*FL_conv1 + E_AC*T*sum(FL_n*fr_n)",
    "ems_yolo": "E = T*sum(fr*E_AC*OP_AC + E_MAC*OP_MAC)",
}


def paper_energy(activity: Activity, T: int, e_mac_pj: float, e_ac_pj: float) -> dict[str, Any]:
    """Per image: both papers' FLOPs, synaptic operations and energy (pJ) for this run."""
    syns = [s for s in activity.synapses.values() if s.kind == "conv"]
    fr = {k: v.firing_rate for k, v in activity.populations.items()}
    mac_flops = sum(s.flops_padded for s in syns if s.encoding)
    ac_flops = sum(s.flops_padded for s in syns if not s.encoding)
    rated = sum(s.flops_padded * fr.get(s.src, 0.0) for s in syns if not s.encoding)
    sops = T * rated  # SOP_l = fr_l x T x FLOPs_l
    return {
        "flops_per_step": mac_flops + ac_flops,
        "mac_flops_per_step": mac_flops,
        "ac_flops_per_step": ac_flops,
        "sops": sops,
        "spikeyolo": {
            "formula": FORMULAS["spikeyolo"],
            "energy_pj": e_mac_pj * mac_flops + e_ac_pj * sops,
        },
        "ems_yolo": {
            "formula": FORMULAS["ems_yolo"],
            "energy_pj": T * (e_ac_pj * rated + e_mac_pj * mac_flops),
        },
        "e_mac_pj": e_mac_pj,
        "e_ac_pj": e_ac_pj,
    }
