"""The connectivity-aware core model of a hardware profile (Loihi 2), kept apart from the
profile loader (``profiles``) that validates its figures.

A profile with ``connectivity.*`` and ``partition.neurons`` figures is mapped with
``spikedet.deploy.mapping.connectivity``: conv edges on population axons with a kernel stored
once per core, dense edges per source axon with ``dense_synapse_bits`` per synapse, and the
partition rule of the target's compiler. Without them every connection is charged per source
neuron and per weight (the Loihi 1 model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# the connectivity-aware core model: all or none of these (``CoreModel``)
CORE_MODEL_KEYS: dict[str, tuple[str, type, float]] = {
    "connectivity.word_bits": ("bits", int, 1),
    "connectivity.dense_synapse_bits": ("bits", int, 1),
    "connectivity.conv_header_words": ("count", int, 0),
    "connectivity.conv_axons_per_edge": ("count", int, 0),
    "partition.neurons": ("count", int, 1),
}
PARTITION_KINDS = ("lif", "ilif", "cuba", "readout", "maxpool", "psum", "relay")


@dataclass(frozen=True)
class CoreModel:
    """How a core with convolutional connectivity (Loihi 2) is charged; see
    ``spikedet.deploy.mapping.connectivity``.

    ``word_bits``: a synaptic memory word; ``dense_synapse_bits``: one dense/sparse synapse
    entry (weight plus index and format bits); ``conv_header_words``: words per (source
    channel, kernel tap) row of a shared conv kernel besides its packed weights;
    ``conv_axons``: fan-in axons a core spends per incoming conv edge (population axons);
    ``budgets``: the partition budget of neurons per core, per population kind."""

    word_bits: int
    dense_synapse_bits: int
    conv_header_words: int
    conv_axons: int
    budgets: dict

    def budget(self, kind: str) -> int:
        return int(self.budgets.get(kind, self.budgets["default"]))


def build_core_model(get: Callable[[str], float], keys: set[str]) -> CoreModel:
    """The ``CoreModel`` of a profile (``get``: a figure's value, ``keys``: its figures)."""
    budgets = {"default": int(get("partition.neurons"))}
    for kind in PARTITION_KINDS:
        if f"partition.neurons_{kind}" in keys:
            budgets[kind] = int(get(f"partition.neurons_{kind}"))
    return CoreModel(
        word_bits=int(get("connectivity.word_bits")),
        dense_synapse_bits=int(get("connectivity.dense_synapse_bits")),
        conv_header_words=int(get("connectivity.conv_header_words")),
        conv_axons=int(get("connectivity.conv_axons_per_edge")),
        budgets=budgets,
    )
