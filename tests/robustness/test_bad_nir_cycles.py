"""Bad cycles in third-party NIR graphs for `spikedet deploy --input` (docs/semantics.md §4.1,
§4.4): one stderr line `spikedet: error: <what> (<where>)` naming the node or synapse, exit 2,
no traceback and no report written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nir
import numpy as np
import pytest

from tests.robustness.test_bad_inputs import files_under, refused


def lif(n: int) -> nir.LIF:
    return nir.LIF(tau=np.full(n, 1e-3, np.float32), r=np.ones(n, np.float32),
                   v_leak=np.zeros(n, np.float32), v_threshold=np.ones(n, np.float32),
                   v_reset=np.zeros(n, np.float32))  # fmt: skip


def lin(o: int, i: int, sign: float = 1.0) -> nir.Linear:
    return nir.Linear(weight=np.full((o, i), sign, np.float32))


def cycle(
    b: nir.NIRNode | None = None, back: nir.NIRNode | None = None, wait: float | None = 1e-4
) -> nir.NIRGraph:
    """input(2) -> fc -> a(3) -> ab -> b(3) -> ba -> [Delay wait] -> a: lag 1 + wait/dt."""
    nodes = {"input": nir.Input(input_type=np.array([2])), "fc": lin(3, 2), "a": lif(3),
             "ab": lin(3, 3), "b": b or lif(3), "ba": back or lin(3, 3, -1.0),
             "output": nir.Output(output_type=np.array([3]))}  # fmt: skip
    edges = [("input", "fc"), ("fc", "a"), ("a", "ab"), ("ab", "b"), ("b", "ba"), ("b", "output")]
    if wait is None:
        return nir.NIRGraph(nodes=nodes, edges=[*edges, ("ba", "a")], type_check=False)
    nodes["d"] = nir.Delay(delay=np.full(3, wait, np.float32))
    return nir.NIRGraph(nodes=nodes, edges=[*edges, ("ba", "d"), ("d", "a")], type_check=False)


def three_populations() -> nir.NIRGraph:
    """a -> b -> c -> Delay(1 step) -> a: 3 synapses, lag 2."""
    g = cycle()
    nodes = {**g.nodes, "bc": lin(3, 3), "c": lif(3)}
    edges = [e for e in g.edges if e != ("b", "ba")] + [("b", "bc"), ("bc", "c"), ("c", "ba")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def wide_split() -> nir.NIRGraph:
    """p reads 5000 spiking neurons (a fan-in split on Loihi 2) and itself, lag 1: the split
    adds a hardware step to the loop p -> partial sum -> p."""
    n = 5000
    nodes = {"input": nir.Input(input_type=np.array([2])), "w0": lin(n, 2), "src": lif(n),
             "w": nir.Linear(weight=np.tile(np.float32([0.5, -0.5]), (3, n // 2))),
             "p": lif(3), "rec": lin(3, 3, -0.5),
             "output": nir.Output(output_type=np.array([3]))}  # fmt: skip
    edges = [("input", "w0"), ("w0", "src"), ("src", "w"), ("w", "p"), ("p", "rec"),
             ("rec", "p"), ("p", "output")]  # fmt: skip
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


GRAPHS: dict[str, tuple[Callable[[], nir.NIRGraph], str]] = {
    # 2 synapses, lag 1 (only the recurrent edge): no hardware schedule
    "cycle-needs-a-delay": (lambda: cycle(wait=None), "add a Delay of 1 step(s)"),
    "cycle-of-three-needs-a-delay": (three_populations, "(a -> b -> c -> a)"),
    # 100 steps of dt = 1e-4 on the way back: above Loihi 2's 6-bit delays
    "cycle-delay-beyond-delay-bits": (lambda: cycle(wait=100e-4), "6-bit delays"),
    "cycle-delay-not-whole-steps": (lambda: cycle(wait=1.5e-4), "node d"),
    "cycle-parameter-wrong-shape": (lambda: cycle(b=lif(2)), "node b"),
    "cycle-back-weight-wrong-width": (lambda: cycle(back=lin(3, 5)), "node ba"),
    "cycle-back-edge-disagrees": (lambda: cycle(back=lin(4, 3)), "node a"),
    "cycle-fan-in-split-without-spare-lag": (wide_split, "synapse rec->p"),
}


@pytest.mark.parametrize("case", list(GRAPHS))
def test_bad_cycle(case: str, tmp_path: Path, capsys) -> None:
    make, expected = GRAPHS[case]
    path = tmp_path / "bad.nir"
    nir.write(path, make())
    x = tmp_path / "x.npy"
    np.save(x, np.ones((5, 2, 2), np.float32))
    out = tmp_path / "out"
    argv = ["deploy", str(path), "--input", str(x), "--engine", "fixed", "--out", str(out),
            "--dt", "1e-4"]  # fmt: skip
    line = refused(argv, capsys, expected)
    assert "bad.nir" in line or case == "cycle-fan-in-split-without-spare-lag"
    assert files_under(out) == []
