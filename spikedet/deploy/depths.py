"""Logical depths and synaptic delays of a QuantGraph (docs/semantics.md §3.3, lags §4.4).

Every synapse has one hardware step of latency, and population P handles logical step t at
hardware step depth(P) + t. A synapse e with lag L(e) (its destination's step t reads its
source's step t − L) therefore needs

    delay(e) = depth(dst e) − depth(src e) − 1 + L(e) >= 0

extra steps. The depths are the least integers with depth(input) = 0, depth(P) >= 1 and
depth(dst e) >= depth(src e) + 1 − L(e) for every synapse e (a maxpool population M:
depth(M) = depth(src M) + 1, its pooling synapse's latency). Without lags this is the
one-pass max over incoming synapses of depth(src) + 1 (our detector graphs). A backward
synapse (lag >= 1: a NIR recurrent edge, a cycle) may push an earlier population deeper, so
the constraints are relaxed in topological order until nothing changes. Summed around a cycle
of k synapses with total lag L the constraints say 0 >= k − L: such depths exist iff every
cycle has L >= k (the hardware spends one step per synapse of the loop, the graph allows L);
a shorter cycle is refused naming its lagged synapse and the missing steps.
"""

from __future__ import annotations

from collections.abc import Sequence

from spikedet.errors import SpikedetError
from spikedet.sim.qgraph import QPopulation, QSynapse

DEFAULT_MAX_DELAY = 63  # Loihi 2 synaptic delays have 6 bits


def _cycle(parent: dict[str, tuple[str, QSynapse | None]], start: str) -> list:
    """The cycle of parent links that ``start`` (updated in the last round) leads into."""
    node = start
    for _ in range(len(parent) + 1):  # walk far enough back to be on the cycle itself
        node = parent.get(node, ("input", None))[0]
        if node == "input":
            return []
    links, seen = [], set()
    while node not in seen:
        seen.add(node)
        src, syn = parent[node]
        links.append((src, node, syn))
        node = src
    return links[::-1]


def _refuse_cycle(parent: dict, start: str) -> None:
    links = _cycle(parent, start)
    syns = [s for _, _, s in links if s is not None]
    if not syns:  # cannot happen (a positive cycle has parent links); name what moved
        raise SpikedetError("depths do not converge", f"population {start}")
    k, lag = len(links), sum(s.lag for s in syns)
    back = max(syns, key=lambda s: s.lag)  # the recurrent edge: the loop is read from its end
    at = next(i for i, (_, _, s) in enumerate(links) if s is back) + 1
    links = links[at:] + links[:at]
    path = " -> ".join([links[0][0], *(dst for _, dst, _ in links)])
    raise SpikedetError(
        f"closes a cycle of {k} synapses ({path}) that the graph delays by {lag} step(s); "
        f"the hardware spends one step per synapse: add a Delay of {k - lag} step(s) (x dt) "
        "in the cycle",
        f"synapse {back.name}",
    )


def assign_depths(
    populations: Sequence[QPopulation],
    synapses: Sequence[QSynapse],
    max_delay: int | None = DEFAULT_MAX_DELAY,
) -> None:
    """Set ``depth`` of every population and ``delay`` of every synapse in place (module
    docstring). ``populations`` must be in topological order of the synapses without lag
    (a QuantGraph's order); a delay above ``max_delay``, a synapse from a later population
    without lag, or a cycle with too little lag is a SpikedetError naming the synapse."""
    incoming: dict[str, list[QSynapse]] = {p.name: [] for p in populations}
    for s in synapses:
        if s.dst not in incoming:
            raise SpikedetError(f"unknown destination {s.dst}", f"synapse {s.name}")
        incoming[s.dst].append(s)
    depth: dict[str, int] = {"input": 0}
    parent: dict[str, tuple[str, QSynapse | None]] = {}  # what last set a population's depth
    for sweep in range(len(populations) + 2):
        moved = None
        for pop in populations:
            if pop.kind == "maxpool":
                if pop.src not in depth or pop.src == "input":
                    raise SpikedetError(
                        f"source {pop.src!r} is not an earlier population", f"population {pop.name}"
                    )
                best, link = depth[pop.src] + 1, (pop.src, None)
            else:
                if not incoming[pop.name]:
                    raise SpikedetError(
                        "population has no incoming synapse", f"population {pop.name}"
                    )
                best, link = 1, None
                for s in incoming[pop.name]:
                    if s.src not in depth:  # a later population: only a lagged synapse may
                        if not s.lag and sweep == 0:
                            raise SpikedetError(
                                f"source {s.src} is not an earlier population", f"synapse {s.name}"
                            )
                        continue
                    if depth[s.src] + 1 - s.lag > best:
                        best, link = depth[s.src] + 1 - s.lag, (s.src, s)
            if best > depth.get(pop.name, 0):
                depth[pop.name] = best
                if link is not None:
                    parent[pop.name] = link
                moved = pop.name
        if moved is None:
            break
        if sweep == len(populations) + 1:  # still moving: a cycle with too little lag
            _refuse_cycle(parent, moved)
    for pop in populations:
        pop.depth = depth[pop.name]
    for s in synapses:
        s.delay = depth[s.dst] - depth[s.src] - 1 + s.lag
        if max_delay is not None and s.delay > max_delay:
            raise SpikedetError(
                f"needs a delay of {s.delay} steps, above the limit of {max_delay}",
                f"synapse {s.name}",
            )
