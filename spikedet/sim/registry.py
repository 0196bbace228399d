"""The engine registry: engines by name. Heavy back ends (Lava, torch) are imported only when
asked for, so ``spikedet.sim`` imports without them. The interface they implement lives in
``spikedet.sim.interface``; this module sits above the engines and imports them, never the reverse.
"""

from __future__ import annotations

import importlib
from typing import Any

from spikedet.errors import SpikedetError
from spikedet.sim.interface import Engine

ENGINE_NAMES = ("fixed", "lava", "reference")


def get_engine(name: str, **options: Any) -> Engine:
    """The engine called ``name``; heavy back ends (Lava, torch) are imported only here.

    ``options`` go to the engine's constructor (the reference engine needs ``nir_graph``).
    """
    if name == "fixed":
        from spikedet.sim.fixed import FixedEngine

        return FixedEngine(**options)
    if name == "reference":
        from spikedet.sim.reference import ReferenceEngine

        return ReferenceEngine(**options)
    if name == "lava":
        try:
            module = importlib.import_module("spikedet.sim.lava_engine")
        except ImportError as err:
            raise SpikedetError(f"the lava engine cannot be loaded: {err}", "engine lava") from None
        return module.LavaEngine(**options)
    raise SpikedetError(
        f"unknown engine {name!r}; choose one of {', '.join(ENGINE_NAMES)}", "engine"
    )


def available_engine(name: str, **options: Any) -> Engine:
    """``get_engine(name)``, refusing an engine that cannot run here: an unavailable engine is
    an error naming why, never a silent fallback."""
    engine = get_engine(name, **options)
    ok, why = engine.available()
    if not ok:
        raise SpikedetError(why, f"{name} engine")
    return engine
