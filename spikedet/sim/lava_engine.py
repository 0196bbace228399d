"""The ``lava`` engine, core side: runs ``spikedet.sim.lava_worker`` inside ``.venv-lava``.

Lava 0.10.0 needs Python 3.10 and numpy 1.x, the training stack Python 3.11 and numpy 2, so the
simulation runs in a separate interpreter. ``LavaEngine.run`` writes the QuantGraph and the
integer input to a temporary directory, starts the worker there (its own process group, so a
timeout ends the Lava processes it spawned too), and reads back its atomic ``.npz``. This module
imports neither torch nor lava. An unavailable Lava environment is an error, never a silent
fallback to another engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import spikedet
from spikedet.errors import SpikedetError
from spikedet.sim.interface import EngineResult, check_input
from spikedet.sim.qgraph import QuantGraph

REPO = Path(spikedet.__file__).resolve().parents[1]
ERROR_PREFIX = "spikedet-lava: error: "
SETUP_HINT = (
    "install Python 3.10 (e.g. 'pyenv install 3.10.13') and run 'make setup', "
    "or set SPIKEDET_LAVA_PYTHON"
)


def _candidate_python() -> Path:
    """The interpreter we would use: $SPIKEDET_LAVA_PYTHON, else <repo>/.venv-lava/bin/python."""
    override = os.environ.get("SPIKEDET_LAVA_PYTHON")
    return Path(override) if override else REPO / ".venv-lava" / "bin" / "python"


def lava_python() -> Path | None:
    """The Lava environment's Python, or None where that file does not exist."""
    cand = _candidate_python()
    return cand if cand.exists() else None


def _split_error_line(line: str) -> tuple[str, str | None]:
    """'<what> (<where>)' -> (what, where); a line without a trailing '(...)' has no where."""
    if line.endswith(")") and " (" in line:
        what, where = line[:-1].rsplit(" (", 1)
        return what, where
    return line, None


class LavaEngine:
    """Runs a QuantGraph bit-accurately with Lava's ``fixed_pt`` models (docs/semantics.md §3)."""

    name = "lava"

    def __init__(
        self, python: str | None = None, timeout_s: float = 1800, record_states: tuple = ()
    ):
        self._python = Path(python) if python else None
        self.timeout_s = float(timeout_s)
        # populations computed by Lava's LIF whose u and v come back in info["states"] (§3.8)
        self.record_states = tuple(record_states)

    @property
    def python(self) -> Path:
        return self._python if self._python is not None else _candidate_python()

    def available(self) -> tuple[bool, str]:
        path = self.python
        if not path.exists():
            return False, f"Lava environment not found ({path}): {SETUP_HINT}"
        return True, f"Lava environment {path}"

    def run(self, qg: QuantGraph, x_int: np.ndarray) -> EngineResult:
        """Simulate ``x_int`` ([B,C,H,W] static or [T,B,C,H,W] integers) through ``qg``.

        Returns spikes ``{pop: int64 [T,B,C,H,W]}`` of every spiking population and readouts
        ``{pop: int64 [B,C,H,W]}`` (v_{T-1}) of every readout population. ``wall_s`` covers the
        whole worker (start, compile, simulation, transfer); ``info`` carries the worker's own
        compile and per-step times.
        """
        ok, why = self.available()
        if not ok:
            raise SpikedetError(why, "lava engine")
        check_input(qg, x_int)  # fail here, before starting an interpreter
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="spikedet-lava-") as tmp_dir:
            tmp = Path(tmp_dir)
            qg.save(tmp / "graph.npz")
            np.save(tmp / "input.npy", np.asarray(x_int))
            out = tmp / "out.npz"
            log = self._run_worker(tmp / "graph.npz", tmp / "input.npy", out)
            spikes, readouts, info = _load_result(out)
        info["worker_log"] = log
        return EngineResult(
            spikes=spikes,
            readouts=readouts,
            wall_s=time.perf_counter() - start,
            engine=self.name,
            info=info,
        )

    def _run_worker(self, graph: Path, x_path: Path, out: Path) -> str:
        """Run the worker; return its stdout (progress) or raise with its error line."""
        cmd = [
            str(self.python),
            "-m",
            "spikedet.sim.lava_worker",
            "--graph",
            str(graph),
            "--input",
            str(x_path),
            "--out",
            str(out),
            *(["--states", ",".join(self.record_states)] if self.record_states else []),
        ]
        env = dict(os.environ)
        # The worker must run this checkout's spikedet, whatever the Lava interpreter has installed.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(graph.parent),
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            # Lava spawns one OS process per Lava process; all share the worker's session.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise SpikedetError(
                f"Lava worker did not finish within {self.timeout_s:g} s (a failing Lava "
                "process model hangs the runtime; rerun the worker with --debug)",
                "lava engine",
            ) from None
        finally:
            # Lava helper processes left behind by a crashed worker would otherwise linger.
            if proc.returncode is not None and proc.returncode != 0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0:
            lines = [ln for ln in stderr.splitlines() if ln.startswith(ERROR_PREFIX)]
            if lines:
                raise SpikedetError(*_split_error_line(lines[-1][len(ERROR_PREFIX) :].strip()))
            tail = [ln for ln in stderr.splitlines() if ln.strip()][-1:] or ["no message"]
            raise SpikedetError(
                f"Lava worker failed with exit status {proc.returncode}: {tail[0].strip()}",
                "lava engine",
            )
        if not out.exists():
            raise SpikedetError("Lava worker wrote no result", "lava engine")
        return stdout


def _load_result(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    spikes: dict[str, np.ndarray] = {}
    readouts: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as z:
        info = json.loads(str(z["info"]))
        for key in z.files:
            if key.startswith("spike__"):
                spikes[key[len("spike__") :]] = z[key].astype(np.int64)
            elif key.startswith("readout__"):
                readouts[key[len("readout__") :]] = z[key].astype(np.int64)
            elif key.startswith("state__"):
                _, quantity, pop = key.split("__", 2)
                info.setdefault("states", {}).setdefault(pop, {})[quantity] = z[key]
    return spikes, readouts, info
