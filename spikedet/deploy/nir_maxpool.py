"""The max-pool half of the NIR parser (docs/semantics.md §2.7b): the ``spikedet.neuron =
"maxpool"`` Thresholds ``M.q{k}``, each reading one ``M.pool{k}`` SumPool2d of level k of a
source population, become one ``maxpool`` FPopulation ``M``.
"""

from __future__ import annotations

import re
from typing import Any

from spikedet.deploy.nir_graph import FPopulation, plain

PARAM_TOL = 1e-6  # recovered beta/alpha vs metadata, threshold offsets, reset scale
LEVEL_NAME = re.compile(r"^(?P<pop>.+)\.q(?P<k>[0-9]+)$")


class MaxPoolReader:
    """Mixin of the parser (``nir_parse._Parser``), which provides ``need``, ``kind``, ``op``,
    ``uniform``, ``pair_of``, ``check_readers``, ``add_spiking`` and the maps below."""

    nodes: dict[str, Any]
    preds: dict[str, list[str]]
    pops: dict[str, FPopulation]
    spike_owner: dict[str, str]
    spike_nodes: dict[str, list[str]]

    def parse_maxpools(self) -> None:
        """§2.7b: group the ``spikedet.neuron = "maxpool"`` Thresholds ``M.q{k}`` by ``M`` and
        parse each group once its source population is known (chains are allowed)."""
        groups: dict[str, dict[int, str]] = {}
        for q in self.nodes:
            meta = plain(self.nodes[q].metadata or {}) if self.kind(q) == "Threshold" else {}
            if meta.get("spikedet.neuron") != "maxpool":
                continue
            match = LEVEL_NAME.match(q)
            self.need(match, "a maxpool Threshold must be named <population>.q<k>", q)
            k = int(match["k"])
            self.need(int(meta.get("spikedet.bit", -1)) == k, f"spikedet.bit is not {k}", q)
            groups.setdefault(match["pop"], {})[k] = q
        pending = dict(groups)
        while pending:
            ready = [m for m, levels in pending.items() if self.pool_source(levels) in self.pops]
            if not ready:
                m, levels = next(iter(pending.items()))
                src = self.pool_source(levels)
                self.need(
                    False, f"max-pool source {src} is not a spiking population", levels[min(levels)]
                )
            for m in ready:
                self.parse_maxpool(m, pending.pop(m))

    def pool_source(self, levels: dict[int, str]) -> str | None:
        """The population read (through its pooling) by the lowest level of a max-pool group."""
        q = levels[min(levels)]
        pools = self.preds[q]
        if len(pools) != 1 or len(self.preds[pools[0]]) != 1:
            return None
        return self.spike_owner.get(self.preds[pools[0]][0])

    def parse_maxpool(self, name: str, levels: dict[int, str]) -> None:
        """M.q{k} <- Threshold(½) <- M.pool{k} (SumPool2d) <- level k of the source, k = 1..D."""
        need = self.need
        src = self.pool_source(levels)
        source = self.pops[src]
        src_levels = self.spike_nodes[src]
        first = levels[min(levels)]
        ok = sorted(levels) == list(range(1, len(src_levels) + 1))
        what = f"levels {sorted(levels)} of max-pool {name} do not match the {len(src_levels)}"
        need(ok, f"{what} levels of its source {src}", first)
        params, pools = None, []
        for k, q in sorted(levels.items()):
            (pool,) = self.preds[q] if len(self.preds[q]) == 1 else (None,)
            ok = pool is not None and self.kind(pool) == "SumPool2d" and self.op(pool) is None
            need(ok, "a maxpool Threshold must read one SumPool2d (without spikedet.op)", q)
            ok = self.preds[pool] == [src_levels[k - 1]] and self.succs[pool] == [q]
            what = f"pooling must read only {src_levels[k - 1]} (level {k} of {src})"
            need(ok, f"{what} and feed only {q}", pool)
            node = self.nodes[pool]
            here = tuple(
                self.pair_of(getattr(node, f), f, pool)
                for f in ("kernel_size", "stride", "padding")
            )
            need(params in (None, here), f"pooling {here} differs from level 1 {params}", pool)
            params = here
            thr, thr_shape = self.uniform(self.nodes[q].threshold, "threshold", q)
            need(abs(thr - 0.5) <= PARAM_TOL, f"maxpool threshold {thr:.6g} is not 0.5", q)
            self.check_readers(q, (), "Threshold")
            pools.append(pool)
        kernel, stride, padding = params
        need(
            min(kernel) >= 1 and min(stride) >= 1 and min(padding) >= 0,
            f"bad pooling {params}",
            pools[0],
        )
        c, h, w = source.shape
        oh, ow = ((n + 2 * p - k) // s + 1 for n, k, s, p in zip((h, w), kernel, stride, padding))
        need(min(oh, ow) >= 1, f"max-pool of {source.shape} by {params} is empty", pools[0])
        for q in levels.values():
            ok = self.uniform(self.nodes[q].threshold, "threshold", q)[1] in ((), (1,), (c, oh, ow))
            need(ok, f"threshold shape is not the pooled shape {(c, oh, ow)}", q)
        pop = FPopulation(
            name, "maxpool", (c, oh, ow), D=source.D, src=src,
            pool_kernel=kernel, pool_stride=stride, pool_padding=padding,
        )  # fmt: skip
        self.add_spiking(pop, [levels[k] for k in sorted(levels)], pools)
