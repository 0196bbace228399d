"""``NIRBuilder``: what a model's ``trace`` calls to describe itself as a NIR graph (§2).

Currents are symbolic (``blocks.Current``: a sum of ``nir_terms.Term``). Maps applied to a
current (``linear``, ``concat``, ``upsample``) only change its terms; NIR nodes appear when a
consumer reads a current: ``spikes`` (a neuron population), ``readout`` (an integrator) or
``max_pool`` (a §2.8 node). The nodes themselves are written by ``nir_nodes.NodeWriter``.

Populations and readouts are built by ``nir_populations`` (I-LIF §2.2, EMS LIF §2.5,
max-pooled spikes §2.7b, readouts §2.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nir
import numpy as np
from torch import nn

from spikedet.convert import nir_populations as npop
from spikedet.convert import nir_terms as nt
from spikedet.convert.nir_nodes import INPUT_NODE, NodeWriter
from spikedet.convert.nir_populations import Population
from spikedet.errors import SpikedetError
from spikedet.train.models.blocks import Current
from spikedet.train.neurons import ILIF, LIF

DEFAULT_DT = 1e-4


class _GraphInput:
    """Sentinel for ``builder.input`` (the real-valued image entering the first conv)."""

    def __repr__(self) -> str:
        return "<graph input>"


class NIRBuilder(NodeWriter):
    """Implements ``blocks.Builder`` (see the module docstring).

    ``population_of``: traced neuron module -> the population representing it (neurons reading
    an equal current with equal parameters share one). ``split_of``: a neuron exported as several
    populations (SPPF, §2.7b) -> their names in channel order. ``factors``: module paths that
    appear in some conv node's recipe. ``extensions``: the §2.8 ops used.
    """

    def __init__(
        self, model: nn.Module, input_shape: tuple[int, int, int], T: int, dt: float = DEFAULT_DT
    ):
        if len(input_shape) != 3 or min(input_shape) < 1:
            raise SpikedetError(f"input shape must be (C, H, W), got {input_shape}", "export")
        self.input: object = _GraphInput()
        self.input_shape = tuple(int(v) for v in input_shape)
        self.T, self.dt = int(T), float(dt)
        super().__init__(nt.ModuleLookup(model), self.input_shape)
        self._module_names = {id(m): name for name, m in model.named_modules()}
        self.populations: dict[str, Population] = {}
        self.population_of: dict[str, str] = {}
        self.split_of: dict[str, list[str]] = {}
        self.readouts: dict[str, tuple[int, int, int]] = {}
        self._population_by_key: dict[tuple, Population] = {}

    # -- blocks.Builder: synapses and maps on currents ----------------------------------------

    def conv(self, src: Any, synapse: nn.Module) -> Current:
        """A conv reading the input, a population, or a channel concatenation of populations
        (a list: the conv is split by input channels into ``<conv>#k``, the bias on #0)."""
        where = self._module_name(synapse)
        info = self.lookup.conv(where)
        parts = list(src) if isinstance(src, list | tuple) else [src]
        sources = [self._source(p, where) for p in parts]
        if len(sources) == 1:
            return Current((self._term(sources[0], (nt.ConvStep(where),), where),))
        if info.groups != 1:
            raise SpikedetError("a grouped conv cannot read a concatenation of populations", where)
        terms, lo = [], 0
        for k, source in enumerate(sources):
            step = nt.ConvStep(where, lo, lo + source.shape[0], bias=k == 0, part=k)
            terms.append(self._term(source, (step,), where))
            lo += source.shape[0]
        return Current(tuple(terms))

    def linear(self, current: Current, module: nn.Module) -> Current:
        """A conv (padding 0 unless it reads a max-pooled current as is) or an average pool
        applied to a current: composed into every term (§2.6); a conv's bias goes to term 0."""
        where = self._module_name(module)
        terms = self._terms(current, where)
        out = []
        for i, term in enumerate(terms):
            if isinstance(module, nn.AvgPool2d):
                self.lookup.avg_pool(where)  # refuses what does not compose
                if term.up > 1:
                    raise SpikedetError("average pooling does not commute with upsampling", where)
                step: nt.Step = nt.PoolStep(where)
            else:
                info = self.lookup.conv(where)
                kernel = info.weight.shape[2:]
                if term.up > 1 and (tuple(kernel) != (1, 1) or info.stride != (1, 1)):
                    raise SpikedetError("only a 1x1 stride-1 conv commutes with upsampling", where)
                if not term.identity and info.padding != (0, 0):
                    raise SpikedetError(
                        f"a conv with padding {info.padding} cannot be composed with the conv "
                        "before it (§2.6 needs padding 0)",
                        where,
                    )
                step = nt.ConvStep(where, bias=i == 0)
            out.append(self._term(term.source, term.steps + (step,), where, term.up))
        return Current(tuple(out))

    def concat(self, currents: Sequence[Current], owner: nn.Module, label: str = "") -> Current:
        """Channel concatenation (§2.7): each part's terms are embedded at its channel offset.
        The map is named ``<owner path>[.label]``."""
        where = ".".join(p for p in (self._module_name(owner), label) if p)
        parts = [self._terms(c, where) for c in currents]
        sizes = {t.shape[1:] for terms in parts for t in terms}
        if len(parts) < 2 or len(sizes) != 1:
            raise SpikedetError(f"concatenation needs >= 2 parts of one size, got {sizes}", where)
        total = sum(terms[0].shape[0] for terms in parts)
        out, offset = [], 0
        for terms in parts:
            step = nt.EmbedStep(where, offset, total)
            out += [self._term(t.source, t.steps + (step,), where, t.up) for t in terms]
            offset += terms[0].shape[0]
        return Current(tuple(out))

    def upsample(self, current: Current, module: nn.Module, scale: int = 2) -> Current:
        """Nearest upsampling by 2 (§2.8): every term is materialised as conv -> ``.up2``."""
        where = self._module_name(module)
        if scale != 2:
            raise SpikedetError(f"nearest upsampling by {scale} (only 2 exports)", where)
        out = []
        for term in self._terms(current, where):
            if term.up != 1 or term.identity:
                raise SpikedetError(
                    "upsampling needs a conv term that is not upsampled yet (a max-pooled "
                    "current or a twice upsampled one has no node to carry it)",
                    where,
                )
            c, h, w = term.shape
            if h % 2 or w % 2:
                raise SpikedetError(f"upsampling a {h}x{w} map: §2.8 needs even sizes", where)
            out.append(self._term(term.source, term.steps, where, up=2))
        return Current(tuple(out))

    def max_pool(self, current: Current, pool: nn.Module) -> Current:
        """Max pooling of a current (extension op ``max_pool``, §2.8): not a linear map, so the
        pooled current is one term reading a max_pool node (materialised per embedding)."""
        where = self._module_name(pool)
        kernel, stride, padding = self.lookup.max_pool(where)
        terms = self._terms(current, where)
        c, h, w = terms[0].shape
        shape = (c, *(nt.window_out(n, k, s, p) for n, k, s, p in zip((h, w), kernel, stride,
                                                                      padding)))  # fmt: skip
        source = nt.Source("max_pool", where, shape, (), kernel, stride, padding, terms)
        return Current((nt.Term(source, (), shape),))

    # -- blocks.Builder: consumers ---------------------------------------------------------

    def spikes(self, current: Current, neuron: nn.Module, part: int | None = None) -> Population:
        """The population of ``neuron`` reading ``current``; reused for an equal current and
        parameters. ``part`` k names it ``<neuron>#k`` (one part of a split neuron, §2.7b).

        I-LIF: LI with τ = dt/(1−β), r = α/(1−β) (Euler: v_t = β·v_{t-1} + α·I_t) plus the reset
        Scale −β/α on the previous spike: v_t = β·(v_{t-1} − s_{t-1}) + α·x_t (§1.1, §2.2).
        EMS LIF: LIF with τ = dt/(1−β), r = 1/(1−β), v_th, v_reset = 0 (§1.2, §2.5).
        """
        where = self._module_name(neuron)
        name = where if part is None else f"{where}#{part}"
        terms = self._terms(current, where)
        if isinstance(neuron, ILIF):
            levels, beta, alpha = int(neuron.levels), float(neuron.beta), float(neuron.alpha)
            if levels < 1 or not 0.0 <= beta < 1.0 or not np.isfinite(alpha) or alpha == 0.0:
                raise SpikedetError(
                    f"I-LIF parameters D={levels}, beta={beta}, alpha={alpha} have no LI form "
                    "(need D >= 1, 0 <= beta < 1, alpha != 0)",
                    where,
                )
            key: tuple = (frozenset(terms), "ilif", levels, beta, alpha)
        elif isinstance(neuron, LIF):
            beta, threshold = float(neuron.beta), float(neuron.threshold)
            if not 0.0 <= beta < 1.0 or not np.isfinite(threshold):
                raise SpikedetError(
                    f"LIF parameters beta={beta}, threshold={threshold} have no NIR LIF form", where
                )
            key = (frozenset(terms), "lif", beta, threshold)
        else:
            raise SpikedetError(
                f"unsupported neuron {type(neuron).__name__}: only I-LIF (ILIF) and EMS LIF export",
                where,
            )
        pop = self._population_by_key.get(key)
        if pop is None:
            shape = terms[0].shape
            if key[1] == "ilif":
                pop, nodes, edges = npop.ilif(name, shape, levels, beta, alpha, self.dt)
            else:
                pop, nodes, edges = npop.lif(name, shape, beta, threshold, self.dt)
            self._add_unit(nodes, edges)
            target = f"{name}.li" if key[1] == "ilif" else f"{name}.lif"
            for term in terms:
                self._add_edge(self._materialize(term), target)
            self._population_by_key[key] = pop
            self.populations[pop.name] = pop
        self._record(where, part, pop)
        return pop

    def pool_spikes(
        self, src: Population, pool: nn.Module, neuron: nn.Module, part: int
    ) -> Population:
        """Max-pooled spikes of ``src`` (§2.7b), named ``<neuron>#<part>``: per level k,
        ``M.pool{k}`` (SumPool2d over the bit-k nodes) -> ``M.q{k}`` (Threshold ½). Exact: the
        thermometer code is monotone and zero padding is neutral for spikes >= 0."""
        where = self._module_name(pool)
        name = f"{self._module_name(neuron)}#{part}"
        kernel, stride, padding = self.lookup.max_pool(where)
        if not isinstance(src, Population):
            raise SpikedetError(f"max-pooled spikes need a population, got {src!r}", where)
        key = ("maxpool", src.name, kernel, stride, padding)
        pop = self._population_by_key.get(key)
        if pop is None:
            pop, nodes, edges = npop.max_pooled(name, src, kernel, stride, padding)
            self._add_unit(nodes, edges)
            self._population_by_key[key] = pop
            self.populations[name] = pop
        self._record(self._module_name(neuron), part, pop)
        return pop

    def readout(self, current: Current, role: str) -> str:
        """End ``current`` in integrator ``role`` (r = 1/dt: v_t = v_{t-1} + I_t) and an Output."""
        if not isinstance(role, str) or not role or "/" in role:
            raise SpikedetError(f"bad readout role {role!r}", "export")
        terms = self._terms(current, role)
        self._add_unit(*npop.readout(role, terms[0].shape, self.dt))
        for term in terms:
            self._add_edge(self._materialize(term), role)
        self.readouts[role] = terms[0].shape
        return role

    # -- graph -------------------------------------------------------------------------------

    def graph(self, metadata: dict[str, Any]) -> nir.NIRGraph:
        """The type-checked ``NIRGraph`` of everything traced so far."""
        used = {src for src, _ in self.edges}
        for name in self.conv_shapes:
            if name not in used:
                raise SpikedetError("conv output is never read by a neuron or readout", name)
        if not self.readouts:
            raise SpikedetError("the trace produced no readout", "export")
        try:
            return nir.NIRGraph(
                nodes=dict(self.nodes), edges=list(self.edges), metadata=metadata, type_check=True
            )
        except (ValueError, AssertionError) as err:
            raise SpikedetError(
                f"exported graph fails the NIR type check: {err}", "export"
            ) from err

    # -- materialisation ---------------------------------------------------------------------

    # -- helpers -----------------------------------------------------------------------------

    def _terms(self, current: Any, where: str) -> tuple[nt.Term, ...]:
        terms = getattr(current, "terms", None)
        if not terms or not all(isinstance(t, nt.Term) for t in terms):
            raise SpikedetError(f"expected a traced current, got {current!r}", where)
        if len(set(terms)) != len(terms):
            # Edges carry no weight, so a current X + X cannot be expressed.
            raise SpikedetError("current sums the same synapse more than once", where)
        shapes = {t.shape for t in terms}
        if len(shapes) != 1:
            raise SpikedetError(f"summed terms differ in shape {shapes}", where)
        return tuple(terms)

    def _source(self, src: Any, where: str) -> nt.Source:
        if src is self.input:
            return nt.Source("input", INPUT_NODE, self.input_shape, (INPUT_NODE,))
        if isinstance(src, Population):
            return nt.Source("spikes", src.name, src.shape, src.spike_nodes)
        raise SpikedetError(f"conv input must be a population or the input, got {src!r}", where)

    def _record(self, neuron: str, part: int | None, pop: Population) -> None:
        if part is None:
            self.population_of[neuron] = pop.name
            return
        parts = self.split_of.setdefault(neuron, [])
        if part != len(parts):
            raise SpikedetError(f"split parts must come in order, got #{part}", neuron)
        parts.append(pop.name)

    def _module_name(self, module: Any) -> str:
        name = self._module_names.get(id(module))
        if name is None:
            raise SpikedetError("module is not part of the exported model", type(module).__name__)
        return name
