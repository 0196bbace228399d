"""Validation and serialization of the ``cuba`` and ``li`` population kinds (docs/semantics.md
§3.6, §4.5).

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
RESET_MODES = ("zero", "subtract")  # v <- 0, or v <- v - (vth << 6), after a spike
U_BIAS_LIMIT = 1 << 17  # |u_bias| << 6 stays inside the 24-bit current


def check_cuba(pop: Any, where: str) -> None:
    """Lava's register ranges, a periodic reset inside its interval, a known reset mode and a
    constant current ``u_bias`` per channel or neuron within 18 bits; SpikedetError if not."""
    half = 1 << (CUBA_BIAS_BITS - 1)
    bias, u_bias = pop.bias, pop.u_bias
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
        (pop.reset_mode in RESET_MODES, f"reset_mode {pop.reset_mode!r} not in {RESET_MODES}"),
        (
            not u_bias.size or u_bias.shape[-1] in (pop.shape[0], pop.size),
            f"u_bias {u_bias.shape} does not hold one value per channel or neuron",
        ),
        (
            not u_bias.size or int(abs(u_bias).max()) < U_BIAS_LIMIT,
            f"u_bias up to {abs(u_bias).max(initial=0)} is not below 2^17",
        ),
    ]
    for ok, what in problems:
        if not ok:
            raise SpikedetError(what, where)


def cuba_fields(pop: Any) -> dict:
    """Header fields only cuba populations have (absent otherwise, so older files stay equal);
    the reset mode and the constant current only where they are not the defaults."""
    fields = {k: getattr(pop, k) for k in CUBA_HEADER_KEYS}
    if pop.reset_mode != "zero":
        fields["reset_mode"] = pop.reset_mode
    if pop.u_bias.any():
        fields["u_bias"] = pop.u_bias.tolist()
    return fields
