"""Import lava-dl's ``netx`` without torch (``.venv-lava`` only, where torch is never installed).

lava-dl 0.6.0 (installed with ``pip install --no-deps``, see the Makefile) needs torch only in
two modules that ``netx`` imports without using them for LIF networks: ``netx/hdf5.py`` imports
``lava.lib.dl.slayer.neuron.rf`` (for RF neurons; ``slayer``'s package ``__init__`` imports
torch) and ``netx/__init__.py`` imports ``netx.sequential_modules`` (torch modules). ``load_netx``
puts two stand-ins into ``sys.modules`` first: the RF one refuses RF neurons with a clear error,
the sequential-modules one is empty. Both carry the ``__file__`` of the module they replace,
because Lava's compiler imports every module of a Process's package and asks for its file
(``lava/magma/compiler/compiler_graphs.py``, ``_find_proc_models``). Nothing else is changed:
every netx and Lava class that runs is Intel's.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from spikedet.errors import SpikedetError

LAVA_DL_VERSION = "0.6.0"
RF_MODULE = "lava.lib.dl.slayer.neuron.rf"
SEQUENTIAL_MODULE = "lava.lib.dl.netx.sequential_modules"


def _rf_neuron_params(*_args, **_kwargs):
    raise SpikedetError(
        "RF neurons need lava-dl's slayer (torch), which this environment does not have",
        "netx",
    )


def _stand_in(name: str, file: Path) -> types.ModuleType:
    module = types.ModuleType(name, f"torch-free stand-in for {name} (spikedet.sim.netx_shim)")
    module.__file__ = str(file)
    return module


def netx_dir() -> Path:
    """lava-dl's ``netx`` package folder; SpikedetError when lava-dl is not installed."""
    try:
        spec = importlib.util.find_spec("lava.lib.dl.netx")
    except ModuleNotFoundError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SpikedetError(
            f"lava-dl {LAVA_DL_VERSION} is not installed in this Lava environment "
            "(run 'make setup')",
            sys.executable,
        )
    return Path(list(spec.submodule_search_locations)[0])


def load_netx() -> types.ModuleType:
    """``lava.lib.dl.netx`` imported through the stand-ins (idempotent)."""
    if "lava.lib.dl.netx" in sys.modules:
        return sys.modules["lava.lib.dl.netx"]
    folder = netx_dir()
    rf = _stand_in(RF_MODULE, folder.parent / "slayer" / "neuron" / "rf.py")
    rf.neuron_params = _rf_neuron_params
    sys.modules.setdefault(RF_MODULE, rf)
    sys.modules.setdefault(
        SEQUENTIAL_MODULE, _stand_in(SEQUENTIAL_MODULE, folder / "sequential_modules.py")
    )
    from lava.lib.dl import netx

    return netx
