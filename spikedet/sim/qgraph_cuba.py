"""Validation and serialization of the ``cuba`` population kind (docs/semantics.md §3.6).

Kept out of ``spikedet.sim.qgraph`` (which calls it) so that module stays small; it works on
the QPopulation it is given and does not import it.
Register widths: lava-nc 0.10.0 ``lava/proc/lif/models.py`` (``PyLifModelBitAcc`` docstring:
12-bit decays, 13-bit signed bias mantissa, 3-bit bias exponent, 17-bit threshold mantissa).
"""

from __future__ import annotations

from typing import Any

from spikedet.errors import SpikedetError

DECAY_BITS = 12
CUBA_BIAS_BITS = 13  # bias mantissa, signed
CUBA_BIAS_EXP_MAX = 7  # bias exponent, 3 bits unsigned
CUBA_VTH_BITS = 17  # threshold mantissa, unsigned; the threshold is vth << 6
CUBA_HEADER_KEYS = ("du", "bias_exp", "reset_interval", "reset_offset")


def check_cuba(pop: Any, where: str) -> None:
    """Lava's register ranges and a periodic reset inside its interval; SpikedetError if not."""
    half = 1 << (CUBA_BIAS_BITS - 1)
    bias = pop.bias
    interval, offset = pop.reset_interval, pop.reset_offset
    problems = [
        (pop.D == 1, f"a cuba population has D = 1, got {pop.D}"),
        (0 <= pop.du < 1 << DECAY_BITS, f"du must be a 12-bit decay, got {pop.du}"),
        (0 <= pop.vth < 1 << CUBA_VTH_BITS, f"threshold mantissa vth={pop.vth} is not 17-bit"),
        (0 <= pop.bias_exp <= CUBA_BIAS_EXP_MAX, f"bias_exp={pop.bias_exp} is not in 0..7"),
        (
            not bias.size or (-half <= bias.min() and bias.max() < half),
            f"bias mantissa {bias.min()}..{bias.max()} is not 13-bit signed",
        ),
        (interval >= 0, f"negative reset_interval {interval}"),
        (
            (interval == 0 and offset == 0) or 0 <= offset < interval,
            f"reset_offset={offset} is not in 0..reset_interval-1 (interval {interval})",
        ),
    ]
    for ok, what in problems:
        if not ok:
            raise SpikedetError(what, where)


def cuba_fields(pop: Any) -> dict:
    """Header fields only cuba populations have (absent otherwise, so older files stay equal)."""
    return {k: getattr(pop, k) for k in CUBA_HEADER_KEYS}
