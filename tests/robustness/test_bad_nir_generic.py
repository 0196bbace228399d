"""Bad third-party NIR graphs and inputs for `spikedet deploy --input` (docs/semantics.md §4):
one stderr line `spikedet: error: <what> (<where>)` naming the node (or file), exit 2, no
traceback and no report written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest

from tests.robustness.test_bad_inputs import files_under, refused


def f32(*v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def lif(n: int, tau: float = 1e-3) -> nir.LIF:
    return nir.LIF(tau=np.full(n, tau, np.float32), r=np.ones(n, np.float32),
                   v_leak=np.zeros(n, np.float32), v_threshold=np.ones(n, np.float32),
                   v_reset=np.zeros(n, np.float32))  # fmt: skip


def graph(nodes: dict, edges: list) -> nir.NIRGraph:
    nodes = {"input": nir.Input(input_type=np.array([2])), **nodes}
    nodes["output"] = nir.Output(output_type=np.array([3]))
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def chain(*names: str) -> list[tuple[str, str]]:
    return list(zip(names[:-1], names[1:]))


def good() -> nir.NIRGraph:
    return graph({"fc": nir.Linear(weight=np.ones((3, 2), np.float32)), "lif": lif(3)},
                 chain("input", "fc", "lif", "output"))  # fmt: skip


def unknown_type(path: Path) -> str:
    nir.write(path, good())
    with h5py.File(path, "r+") as f:
        del f["node/nodes/fc/type"]
        f["node/nodes/fc/type"] = "Softmax"
    return str(path.name)


def wrong_width() -> nir.NIRGraph:  # a (3, 5) weight reading the 2 inputs
    return graph({"fc": nir.Linear(weight=np.ones((3, 5), np.float32)), "lif": lif(3)},
                 chain("input", "fc", "lif", "output"))  # fmt: skip


def inconsistent() -> nir.NIRGraph:  # two inputs of one neuron with different widths
    nodes = {"fc": nir.Linear(weight=np.ones((3, 2), np.float32)),
             "fc2": nir.Linear(weight=np.ones((4, 2), np.float32)), "lif": lif(3)}  # fmt: skip
    return graph(nodes, [*chain("input", "fc", "lif", "output"), ("input", "fc2"), ("fc2", "lif")])


def param_shape() -> nir.NIRGraph:  # a LIF of 2 neurons (tau, r, ...) fed 3 values
    return graph({"fc": nir.Linear(weight=np.ones((3, 2), np.float32)), "lif": lif(2)},
                 chain("input", "fc", "lif", "output"))  # fmt: skip


def cycle_without_delay() -> nir.NIRGraph:  # a -> b -> a: 2 synapses, the graph delays 1 step
    nodes = {"fc": nir.Linear(weight=np.ones((3, 2), np.float32)), "a": lif(3),
             "ab": nir.Linear(weight=np.eye(3, dtype=np.float32)), "b": lif(3),
             "ba": nir.Linear(weight=-np.eye(3, dtype=np.float32))}  # fmt: skip
    edges = [*chain("input", "fc", "a", "ab", "b", "output"), ("b", "ba"), ("ba", "a")]
    return graph(nodes, edges)


def linear_cycle() -> nir.NIRGraph:  # fc <-> back: a loop with no neuron in it
    nodes = {"fc": nir.Linear(weight=np.ones((3, 2), np.float32)),
             "mix": nir.Linear(weight=np.eye(3, dtype=np.float32)),
             "back": nir.Linear(weight=np.eye(3, dtype=np.float32)), "lif": lif(3)}  # fmt: skip
    return graph(nodes, [*chain("input", "fc", "mix", "lif", "output"), ("mix", "back"),
                         ("back", "mix")])  # fmt: skip


def long_delay() -> nir.NIRGraph:  # 100 steps of dt = 1e-4: above Loihi 2's 6-bit delays
    nodes = {"fc": nir.Linear(weight=np.ones((3, 2), np.float32)),
             "wait": nir.Delay(delay=np.full(3, 100e-4, np.float32)), "lif": lif(3)}  # fmt: skip
    return graph(nodes, chain("input", "fc", "wait", "lif", "output"))


def li_readout() -> nir.NIRGraph:  # a decaying readout (LI, tau = 1e-3 s)
    li = nir.LI(tau=np.full(3, 1e-3, np.float32), r=np.ones(3, np.float32),
                v_leak=np.zeros(3, np.float32))  # fmt: skip
    return graph({"fc": nir.Linear(weight=np.ones((3, 2), np.float32)), "li": li},
                 chain("input", "fc", "li", "output"))  # fmt: skip


def uneven_threshold() -> nir.NIRGraph:  # a Threshold population with 3 different thresholds
    return graph({"fc": nir.Linear(weight=np.ones((3, 2), np.float32)),
                  "step": nir.Threshold(threshold=f32(0.5, 1.0, 1.5))},
                 chain("input", "fc", "step", "output"))  # fmt: skip


GRAPHS: dict[str, tuple[Callable, str, list[str]]] = {
    "unknown-node-type": (unknown_type, "", []),
    "weight-wrong-width": (wrong_width, "node fc", []),
    "inconsistent-shapes": (inconsistent, "node lif", []),
    "parameter-wrong-shape": (param_shape, "node lif", []),
    "cycle-without-delay": (cycle_without_delay, "add a Delay", []),
    "cycle-of-linear-nodes": (linear_cycle, "no neuron", []),
    # tau = 1e-3 s with dt = 0.01 s: the Euler factor 1 - dt/tau = -9
    "dt-makes-neuron-unstable": (good, "node lif", ["--dt", "0.01"]),
    # LI readouts and reset by subtraction deploy (§4.5); an unstable LI dt is still refused
    "li-readout-dt-unstable": (li_readout, "node li", ["--dt", "0.01", "--reset", "subtract"]),
    "threshold-varies-across-neurons": (uneven_threshold, "node step", ["--dt", "1"]),
    "delay-beyond-delay-bits": (long_delay, "6-bit delays", ["--dt", "1e-4"]),
}


def _deploy(nir_path: Path, x: Path, out: Path, extra: list[str]) -> list[str]:
    return ["deploy", str(nir_path), "--input", str(x), "--engine", "fixed", "--out", str(out),
            *extra]  # fmt: skip


@pytest.mark.parametrize("case", list(GRAPHS))
def test_bad_graph(case: str, tmp_path: Path, capsys) -> None:
    make, expected, extra = GRAPHS[case]
    path = tmp_path / "bad.nir"
    if make is unknown_type:
        expected = make(path)
    else:
        nir.write(path, make())
    x = tmp_path / "x.npy"
    np.save(x, np.ones((5, 2, 2), np.float32))
    out = tmp_path / "out"
    line = refused(_deploy(path, x, out, extra), capsys, expected)
    assert "bad.nir" in line or case == "unknown-node-type"
    assert files_under(out) == []


INPUTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "input-wrong-shape": (lambda p: np.save(p, np.ones((5, 2, 3))), "x.npy"),
    "input-not-integer": (lambda p: np.save(p, np.full((5, 2, 2), 0.5)), "x.npy"),
    "input-negative": (lambda p: np.save(p, -np.ones((5, 2, 2))), "x.npy"),
    "input-not-an-array": (lambda p: p.write_text("not an array"), "x.npy"),
    "input-nan": (lambda p: np.save(p, np.full((5, 2, 2), np.nan)), "x.npy"),
}


@pytest.mark.parametrize("case", list(INPUTS))
def test_bad_input(case: str, tmp_path: Path, capsys) -> None:
    write, expected = INPUTS[case]
    path = tmp_path / "good.nir"
    nir.write(path, good())
    x = tmp_path / "x.npy"
    write(x)
    out = tmp_path / "out"
    refused(_deploy(path, x, out, ["--dt", "1e-4"]), capsys, expected)
    assert files_under(out) == []


def test_bad_labels(tmp_path: Path, capsys) -> None:
    path = tmp_path / "good.nir"
    nir.write(path, good())
    np.save(tmp_path / "x.npy", np.ones((5, 2, 2)))
    np.save(tmp_path / "y.npy", np.array([0.5, 1.0]))
    argv = _deploy(
        path, tmp_path / "x.npy", tmp_path / "out", ["--labels", str(tmp_path / "y.npy")]
    )
    refused(argv, capsys, "y.npy")
    assert files_under(tmp_path / "out") == []
