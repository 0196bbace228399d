"""The synapse half of the NIR parser: Conv2d nodes (and the upsample nodes they feed) -> FSynapse.

A Conv2d reads the Input or all spike nodes of one population (§2.2, §2.5, §2.7b) and feeds
population nodes (LI, LIF, readout I) directly or through ``upsample_nearest`` nodes (§2.8), one
FSynapse per (conv, target population). Its weight is restored to the compact form the
hardware stores: the channel range of a concatenation part (§2.7, ``spikedet.out_offset`` /
``spikedet.out_channels``) and the grouped weight of a depthwise conv (§2.1,
``spikedet.groups``), each only after checking that the weights left out are exactly zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spikedet.deploy.nir_graph import FPopulation, FSynapse, conv_output_hw, plain
from spikedet.errors import SpikedetError


class ConvReader:
    """Mixin of the parser (``nir_parse._Parser``), which fills the maps below and provides
    ``need(ok, what, node)`` (raise naming the node) and ``kind(node)`` (its NIR type name)."""

    nodes: dict[str, Any]
    preds: dict[str, list[str]]
    succs: dict[str, list[str]]
    where: str
    input_name: str
    input_shape: tuple[int, ...]
    pops: dict[str, FPopulation]
    spike_owner: dict[str, str]
    spike_nodes: dict[str, list[str]]
    pop_of_node: dict[str, str]
    upsample_factor: dict[str, int]

    def pair_of(self, value: Any, what: str, n: str) -> tuple[int, int]:
        """An int or (H, W) pair of non-negative ints, as NIR stores kernel/stride/padding."""
        arr = np.asarray(value).ravel()
        ok = arr.size in (1, 2) and np.all(arr == np.round(arr)) and np.all(arr >= 0)
        self.need(ok, f"{what} {value!r} is not an int or a pair of ints", n)
        arr = np.broadcast_to(arr, (2,))
        return int(arr[0]), int(arr[1])

    def parse_upsample(self, n: str) -> int:
        """An ``upsample_nearest`` SumPool2d (§2.8): kernel 1, stride 1, fed by exactly one
        Conv2d; returns its factor ``spikedet.scale`` (its padding is checked in parse_conv,
        where the conv's output size is known)."""
        node, need = self.nodes[n], self.need
        scale = plain(node.metadata or {}).get("spikedet.scale")
        ok = isinstance(scale, int) and not isinstance(scale, bool) and scale >= 2
        need(ok, f"upsample_nearest needs an integer spikedet.scale >= 2, got {scale!r}", n)
        kernel = self.pair_of(node.kernel_size, "kernel_size", n)
        stride = self.pair_of(node.stride, "stride", n)
        need(kernel == (1, 1) and stride == (1, 1), "upsample_nearest needs kernel 1, stride 1", n)
        feeds = self.preds[n]
        ok = len(feeds) == 1 and self.kind(feeds[0]) == "Conv2d"
        what = f"an upsample node is fed by exactly one Conv2d, this one by {len(feeds)} node(s)"
        need(ok, what + (f" ({', '.join(feeds)})" if feeds else ""), n)
        need(self.succs[n], "upsample node feeds nothing", n)
        return scale

    def parse_conv(self, n: str) -> list[FSynapse]:
        """One FSynapse per (conv, target population); shapes checked against both ends."""
        node, need = self.nodes[n], self.need
        weight = np.asarray(node.weight, dtype=np.float64)
        need(weight.ndim == 4, f"Conv2d weight must be 4-D, got {weight.shape}", n)
        need(np.all(np.asarray(node.dilation) == 1), f"dilation {node.dilation} unsupported", n)
        stride = tuple(int(v) for v in np.broadcast_to(np.asarray(node.stride), (2,)))
        padding = node.padding
        if isinstance(padding, str):  # 'same' keeps the size only at stride 1 with odd kernels
            odd = weight.shape[2] % 2 and weight.shape[3] % 2
            need(padding == "valid" or (stride == (1, 1) and odd), "bad padding 'same'", n)
            padding = (0, 0) if padding == "valid" else (weight.shape[2] // 2, weight.shape[3] // 2)
        pad = tuple(int(v) for v in np.broadcast_to(np.asarray(padding), (2,)))
        bias = np.asarray(0.0 if node.bias is None else node.bias)
        ok = bias.ndim == 0 or bias.shape == weight.shape[:1]
        need(ok, f"bias shape {bias.shape} does not match {weight.shape[0]} output channels", n)
        bias = np.broadcast_to(bias, weight.shape[:1])
        meta = plain(node.metadata or {})
        full_channels = int(weight.shape[0])
        offset, weight, bias = self.channel_range(weight, bias, meta, n)
        groups = int(np.asarray(node.groups))
        if groups == 1 and int(meta.get("spikedet.groups", 1)) > 1:
            groups = int(meta["spikedet.groups"])
            weight = self.regroup(weight, groups, n)
        cin = weight.shape[1] * groups
        meta_cin = meta.get("spikedet.in_channels", cin)
        need(int(meta_cin) == cin, f"spikedet.in_channels={meta_cin}, weight gives {cin}", n)
        src = self.conv_source(n)
        src_shape = self.input_shape if src == "input" else self.pops[src].shape
        given = None if node.input_shape is None else tuple(np.asarray(node.input_shape).ravel())
        ok = given in (None, tuple(src_shape[1:]))
        need(ok, f"input_shape {given} differs from its source {src} {src_shape[1:]}", n)
        need(self.succs[n], "conv output feeds nothing", n)
        out_hw = conv_output_hw(src_shape[1:], weight.shape[2:], stride, pad)
        synapses = []
        for target, via, factor in self.conv_targets(n, (full_channels, *out_hw)):
            dst = self.pop_of_node[target]
            try:
                syn = FSynapse(
                    f"{via}->{dst}", src, dst, weight, bias, stride, pad, groups, offset, factor
                )
                syn.output_shape(src_shape)
            except SpikedetError as err:
                raise SpikedetError(err.what, f"{self.where}: node {n}") from None
            out = (full_channels, out_hw[0] * factor, out_hw[1] * factor)
            want = self.pops[dst].shape
            need(out == want, f"edge {via} -> {target}: output {out} != population {want}", n)
            synapses.append(syn)
        return synapses

    def conv_targets(self, n: str, out: tuple[int, int, int]) -> list[tuple[str, str, int]]:
        """(population node, node the edge leaves, upsample factor) for every target of conv
        ``n`` with output ``out``; an upsample node's padding must make its type f·H x f·W."""
        targets = []
        for target in self.succs[n]:
            if target in self.pop_of_node:
                targets.append((target, n, 1))
                continue
            factor = self.upsample_factor.get(target)
            what = f"conv feeds {target} ({self.kind(target)}), not an LI, LIF, readout or upsample"
            self.need(factor is not None, what, n)
            padding = self.pair_of(self.nodes[target].padding, "padding", target)
            want = tuple((factor - 1) * v for v in out[1:])
            ok = all(v % 2 == 0 for v in want) and padding == tuple(v // 2 for v in want)
            what = f"upsample x{factor} of a {out[1]}x{out[2]} map needs padding (f-1)*(H, W)/2"
            self.need(ok, f"{what} = {tuple(v / 2 for v in want)}, got {padding}", target)
            for dst in self.succs[target]:
                what = f"upsample feeds {dst} ({self.kind(dst)}), not an LI, LIF or readout"
                self.need(dst in self.pop_of_node, what, target)
                targets.append((dst, target, factor))
        return targets

    def channel_range(
        self, weight: np.ndarray, bias: np.ndarray, meta: dict, n: str
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """§2.7: a conv writing channels [o, o + c) of a C-channel current is stored with C
        output rows, the others exactly zero (bias too) -> (o, compact weight, compact bias)."""
        if "spikedet.out_offset" not in meta and "spikedet.out_channels" not in meta:
            return 0, weight, bias
        rows = weight.shape[0]
        offset = meta.get("spikedet.out_offset", 0)
        count = meta.get("spikedet.out_channels", rows - offset if isinstance(offset, int) else 0)
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, count))
        ok = ok and offset >= 0 and count >= 1 and offset + count <= rows
        what = f"spikedet.out_offset={offset!r}, out_channels={count!r} do not fit {rows} rows"
        self.need(ok, what, n)
        inside = np.zeros(rows, dtype=bool)
        inside[offset : offset + count] = True
        ok = not np.any(weight[~inside]) and not np.any(bias[~inside])
        what = f"rows outside channels {offset}..{offset + count - 1} (out_offset) are not zero"
        self.need(ok, what, n)
        return offset, weight[inside], bias[inside]

    def regroup(self, weight: np.ndarray, groups: int, n: str) -> np.ndarray:
        """A grouped conv the exporter wrote as its full equivalent (zeros between groups, since
        nir 1.0.8 cannot read grouped convs back) -> the grouped weight (Cout, Cin/g, KH, KW)."""
        cout, cin = weight.shape[:2]
        self.need(cout % groups == 0 and cin % groups == 0, f"{groups} groups do not divide", n)
        rows, cols = cout // groups, cin // groups
        inside = np.zeros(weight.shape, dtype=bool)
        for g in range(groups):
            inside[g * rows : (g + 1) * rows, g * cols : (g + 1) * cols] = True
        ok = not np.any(weight[~inside])
        self.need(ok, f"spikedet.groups={groups} but weights lie outside the groups", n)
        blocks = [
            weight[g * rows : (g + 1) * rows, g * cols : (g + 1) * cols] for g in range(groups)
        ]
        return np.concatenate(blocks, axis=0)

    def conv_source(self, n: str) -> str:
        """'input' for a conv reading the Input, else the population whose spike nodes (I-LIF /
        maxpool Thresholds, or the LIF node) ALL feed it."""
        preds = self.preds[n]
        if preds == [self.input_name]:
            return "input"
        for p in preds:
            ok = p in self.spike_owner
            what = f"conv is fed by {p} ({self.kind(p)}), not Input or a population's spikes"
            self.need(ok, what, n)
        pops = sorted({self.spike_owner[p] for p in preds})
        what = f"conv reads {len(pops)} populations ({', '.join(pops)}); sums before a conv"
        self.need(len(pops) == 1, what + " are not supported", n)
        qs = self.spike_nodes[pops[0]]
        what = f"conv is fed by {len(preds)} of the {len(qs)} Threshold nodes of {pops[0]}"
        self.need(sorted(preds) == sorted(qs), what + "; it must read all of them", n)
        return pops[0]
