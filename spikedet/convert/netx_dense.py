"""The integer weights Lava's bit-accurate Dense really applies to a netx dense layer.

netx (lava-dl 0.6.0 ``src/lava/lib/dl/netx/utils.py`` ``optimize_weight_bits``, repository
lava-nc/lava-dl at d825ac506eb9bb91ea2b945116fb45a40e775451) rescales a dense weight matrix W
before handing it to Lava's Dense: with the sign mode of W (excitatory: min >= 0, inhibitory:
max < 0, else mixed) and ``scale`` = 255/max, 256/|min| or min(127/max, 128/|min|),
``scale_bits`` = floor(log2(scale)) (+1 when mixed), n = the largest n <= 8 with every weight
a multiple of 2^n (minus 1 when mixed), it passes W << scale_bits, ``num_weight_bits`` =
8 - scale_bits - n and ``weight_exp`` = -scale_bits.

Lava 0.10.0's ``PyDenseModelBitAcc`` (``lava/proc/dense/models.py``, ``lava/utils/weightutils.py``)
then determines its own sign mode (excitatory: min >= 0, inhibitory: max <= 0, else mixed),
clips to 8 bits (mixed -256..255, excitatory 0..255, inhibitory -255..0), truncates
k = 8 - num_weight_bits (+1 when mixed) low bits ((w >> k) << k, of |w| when inhibitory),
sums the weights of the active inputs and shifts the sum right by scale_bits (floor).

When every processed weight is a multiple of 2^scale_bits the shift distributes over the sum
and the layer is the linear map W_eff = processed >> scale_bits, which is what we return;
otherwise the layer is not linear and it is refused (so is anything netx itself cannot take).
"""

from __future__ import annotations

import math

import numpy as np

LAVA_DENSE_MAX_SUM = 1 << 23  # Lava's Dense does not wrap its sum; the conv form would


def _netx_scale_bits(weight: np.ndarray) -> tuple[int, int, bool]:
    """(scale_bits, n, signed) of netx's optimize_weight_bits."""
    w_max, w_min = int(weight.max()), int(weight.min())
    if w_max == 0 and w_min == 0:
        raise ValueError("all dense weights are zero (netx's weight optimization fails on it)")
    if (w_max > 254 and w_min < 0) or (w_min < -256 and w_max > 0):
        raise ValueError(f"weights {w_min}..{w_max} exceed the mixed-sign range -256..254")
    if w_max < 0:
        scale, signed = -256 / w_min, False
    elif w_min >= 0:
        scale, signed = 255 / w_max, False
    else:
        pos = 127 / w_max if w_max > 0 else math.inf
        scale, signed = min(pos, -128 / w_min), True
    scale_bits = math.floor(math.log2(scale)) + int(signed)
    if scale_bits < 0:
        raise ValueError(f"weights {w_min}..{w_max} exceed Loihi's 8-bit synapse range")
    n = 8
    while n > 0 and np.any(weight % (1 << n)):
        n -= 1
    return scale_bits, n - int(signed), signed


def lava_dense_weight(weight: np.ndarray) -> tuple[np.ndarray, int]:
    """(W_eff, weight_exp): the exact integer map Lava's Dense computes for netx weights
    ``weight`` (int64 (out, in)), and netx's weight exponent. ValueError if not linear."""
    weight = np.asarray(weight, dtype=np.int64)
    scale_bits, n, _ = _netx_scale_bits(weight)
    num_weight_bits = 8 - scale_bits - n
    shifted = weight << scale_bits
    lo, hi = int(shifted.min()), int(shifted.max())
    mixed = int(lo < 0 < hi)
    if lo >= 0:
        clipped = np.clip(shifted, 0, 255)
    elif hi <= 0:
        clipped = np.clip(shifted, -255, 0)
    else:
        clipped = np.clip(shifted, -256, 255)
    k = 8 - num_weight_bits + mixed
    if k < 0:
        raise ValueError(f"netx's num_weight_bits={num_weight_bits} is above Loihi's 8 bits")
    if hi <= 0 and lo < 0:  # inhibitory: Lava truncates the magnitude
        processed = -((-clipped >> k) << k)
    else:
        processed = (clipped >> k) << k
    if np.any(processed % (1 << scale_bits)):
        raise ValueError(
            f"Lava's weight exponent -{scale_bits} truncates the sum of these weights, so the "
            "layer is not a linear map"
        )
    effective = processed >> scale_bits
    if int(np.abs(effective).max()) * weight.shape[1] >= LAVA_DENSE_MAX_SUM:
        raise ValueError("the dense sum can exceed 24 bits, where Lava's Dense does not wrap")
    return effective, -scale_bits
