"""Integer max-pooling of spikes for ``maxpool`` populations of the ``fixed`` engine (§2.7b)."""

from __future__ import annotations

import numpy as np

from spikedet.sim.qgraph import QPopulation


def max_pool_int(spikes: np.ndarray, pop: QPopulation) -> np.ndarray:
    """Integer max-pool of ``spikes`` [..., C, H, W] over ``pop``'s window with zero padding
    (neutral: spikes are >= 0). The window max is separable: first along W, then along H, each
    as a running ``np.maximum`` over the kernel's strided shifts."""
    (kh, kw), (sh, sw), (ph, pw) = pop.pool_kernel, pop.pool_stride, pop.pool_padding
    h, w = spikes.shape[-2:]
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    pad = [(0, 0)] * (spikes.ndim - 2) + [(ph, ph), (pw, pw)]
    padded = np.pad(spikes, pad) if ph or pw else spikes
    rows = padded[..., 0 : sw * (wo - 1) + 1 : sw].copy()
    for j in range(1, kw):
        np.maximum(rows, padded[..., j : j + sw * (wo - 1) + 1 : sw], out=rows)
    out = rows[..., 0 : sh * (ho - 1) + 1 : sh, :].copy()
    for i in range(1, kh):
        np.maximum(out, rows[..., i : i + sh * (ho - 1) + 1 : sh, :], out=out)
    return out
