"""Hardware profiles: what a target offers, declared in YAML (Lava style: a profile says *what*).

A profile file has ``name``, ``description``, ``kind`` ("neuromorphic" or "cmos"), optional
``notices`` (strings every report must show), and sections of figures. Every figure is a
mapping ``{value, unit, status, source}``:

- ``status`` is ``measured`` (published for fabricated silicon: a measurement or the documented
  architecture of the shipped chip), ``derived`` (computed by us from published figures of the
  target, e.g. fitted to its compiler's output; the ``source`` says how), ``pre-silicon``
  (published design-time simulation) or ``assumed`` (not published for this target; the
  ``source`` says why the value was chosen);
- ``unit`` must suit the figure: memory in bits/bytes/KiB/MiB, energy in fJ/pJ/nJ, power in
  uW/mW/W, time in ns/us/ms/s; the accessors return canonical units (bits, pJ, mW, us).

Required figures (``section.key``) by kind::

    neuromorphic: chip.cores_per_chip, chip.static_power, core.neurons_per_core,
                  core.synaptic_memory, core.fan_in_axons, core.fan_out_cores,
                  precision.{weight,state,decay,message,delay}_bits, precision.conv_weight_sharing,
                  energy.{synop,neuron_update_active,neuron_update_inactive,message},
                  timing.step_time
    cmos:         energy.mac, energy.ac

Optional, for a connectivity-aware core model (Loihi 2, ``CoreModel``): all of
``connectivity.{word_bits,dense_synapse_bits,conv_header_words,conv_axons_per_edge}`` and
``partition.neurons`` (with optional per-kind budgets ``partition.neurons_<kind>``). Other
sections (e.g. ``alternatives``) may hold further figures in the same form; they are
validated and shown in reports but not used. Built-in profiles ship as the package
``spikedet.hardware_profiles``; a path to a user YAML file works wherever a name does.
"""

from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spikedet.deploy.core_model import (
    CORE_MODEL_KEYS,
    PARTITION_KINDS,
    CoreModel,
    build_core_model,
)
from spikedet.errors import SpikedetError

STATUSES = ("measured", "derived", "pre-silicon", "assumed")
KINDS = ("neuromorphic", "cmos")

# unit -> factor to the canonical unit of its quantity
UNITS: dict[str, dict[str, float]] = {
    "memory": {"bits": 1, "bit": 1, "bytes": 8, "B": 8, "KiB": 8 * 1024, "MiB": 8 * 1024**2},
    "energy": {"fJ": 1e-3, "pJ": 1.0, "nJ": 1e3},
    "power": {"uW": 1e-3, "mW": 1.0, "W": 1e3},
    "time": {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6},
    "bits": {"bits": 1, "bit": 1},
    "flag": {"flag": 1},
}

# key -> (quantity, python type, minimum allowed value); counts take any unit word
_NEURO: dict[str, tuple[str, type, float]] = {
    "chip.cores_per_chip": ("count", int, 1),
    "chip.static_power": ("power", float, 0),
    "core.neurons_per_core": ("count", int, 1),
    "core.synaptic_memory": ("memory", float, 1),
    "core.fan_in_axons": ("count", int, 1),
    "core.fan_out_cores": ("count", int, 1),
    "precision.weight_bits": ("bits", int, 2),
    "precision.state_bits": ("bits", int, 1),
    "precision.decay_bits": ("bits", int, 1),
    "precision.message_bits": ("bits", int, 1),
    "precision.delay_bits": ("bits", int, 0),
    "precision.conv_weight_sharing": ("flag", bool, 0),
    "energy.synop": ("energy", float, 0),
    "energy.neuron_update_active": ("energy", float, 0),
    "energy.neuron_update_inactive": ("energy", float, 0),
    "energy.message": ("energy", float, 0),
    "timing.step_time": ("time", float, 1e-12),
}
_CMOS: dict[str, tuple[str, type, float]] = {
    "energy.mac": ("energy", float, 0),
    "energy.ac": ("energy", float, 0),
}
REQUIRED = {"neuromorphic": _NEURO, "cmos": _CMOS}

TARGET_ALIASES = {"loihi2-sim": "loihi2", "loihi1-sim": "loihi1"}


@dataclass
class Figure:
    """One number with its provenance: ``value`` in ``unit``, how sure (``status``), from where."""

    value: float | int | bool
    unit: str
    status: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "unit": self.unit,
            "status": self.status,
            "source": self.source,
        }


@dataclass
class HardwareProfile:
    """A validated profile; ``figures`` is keyed by ``section.key`` (e.g. ``core.fan_in_axons``)."""

    name: str
    description: str
    kind: str
    figures: dict[str, Figure]
    path: str
    notices: list[str] = field(default_factory=list)

    def figure(self, key: str) -> Figure:
        if key not in self.figures:
            raise SpikedetError(
                f"{key}: missing (profile {self.name} has no such figure)", self.path
            )
        return self.figures[key]

    def get(self, key: str) -> float | int | bool:
        """The value of ``key`` in its canonical unit (bits, pJ, mW, us; counts as given)."""
        fig = self.figure(key)
        spec = {**_NEURO, **_CMOS, **CORE_MODEL_KEYS}.get(key)
        quantity = spec[0] if spec else _quantity_of_unit(fig.unit)
        if quantity in ("count", "flag", "bits", None) or isinstance(fig.value, bool):
            return fig.value
        return fig.value * UNITS[quantity][fig.unit]

    # typed accessors used by mapping and energy (canonical units) -------------------------
    @property
    def cores_per_chip(self) -> int:
        """Cores on one chip (``chip.cores_per_chip``)."""
        return int(self.get("chip.cores_per_chip"))

    @property
    def static_power_mw(self) -> float:
        """Static power of one chip, mW (``chip.static_power``)."""
        return float(self.get("chip.static_power"))

    @property
    def neurons_per_core(self) -> int:
        """Neurons (compartments) per core (``core.neurons_per_core``)."""
        return int(self.get("core.neurons_per_core"))

    @property
    def synaptic_memory_bits(self) -> int:
        """Synaptic memory per core, bits (``core.synaptic_memory``)."""
        return int(self.get("core.synaptic_memory"))

    @property
    def fan_in_axons(self) -> int:
        """Distinct input axons (source neurons) per core (``core.fan_in_axons``)."""
        return int(self.get("core.fan_in_axons"))

    @property
    def fan_out_axons(self) -> int:
        """Distinct destination cores per core (``core.fan_out_cores``)."""
        return int(self.get("core.fan_out_cores"))

    @property
    def weight_bits(self) -> int:
        """Signed weight bits (``precision.weight_bits``)."""
        return int(self.get("precision.weight_bits"))

    @property
    def state_bits(self) -> int:
        """Signed membrane state bits (``precision.state_bits``)."""
        return int(self.get("precision.state_bits"))

    @property
    def decay_bits(self) -> int:
        """Decay constant bits (``precision.decay_bits``)."""
        return int(self.get("precision.decay_bits"))

    @property
    def message_bits(self) -> int:
        """Graded spike payload bits (1 = binary spikes) (``precision.message_bits``)."""
        return int(self.get("precision.message_bits"))

    @property
    def delay_bits(self) -> int:
        """Synaptic delay bits (``precision.delay_bits``)."""
        return int(self.get("precision.delay_bits"))

    @property
    def conv_weight_sharing(self) -> bool:
        """Conv kernels stored once per core (``precision.conv_weight_sharing``)."""
        return bool(self.get("precision.conv_weight_sharing"))

    @property
    def core_model(self) -> CoreModel | None:
        """The connectivity-aware core model, or None (every connection charged per source
        neuron and per weight, the Loihi 1 model)."""
        if "connectivity.word_bits" not in self.figures:
            return None
        return build_core_model(lambda key: self.get(key), set(self.figures))

    @property
    def e_synop_pj(self) -> float:
        """Energy per synaptic op, pJ (``energy.synop``)."""
        return float(self.get("energy.synop"))

    @property
    def e_neuron_active_pj(self) -> float:
        """Energy per active neuron update, pJ (``energy.neuron_update_active``)."""
        return float(self.get("energy.neuron_update_active"))

    @property
    def e_neuron_inactive_pj(self) -> float:
        """Energy per inactive neuron update, pJ (``energy.neuron_update_inactive``)."""
        return float(self.get("energy.neuron_update_inactive"))

    @property
    def e_message_pj(self) -> float:
        """Energy per (spike, destination core) message, pJ (``energy.message``)."""
        return float(self.get("energy.message"))

    @property
    def step_time_us(self) -> float:
        """Time per hardware step, us (``timing.step_time``)."""
        return float(self.get("timing.step_time"))

    @property
    def e_mac_pj(self) -> float:
        """Energy per multiply-accumulate, pJ (cmos) (``energy.mac``)."""
        return float(self.get("energy.mac"))

    @property
    def e_ac_pj(self) -> float:
        """Energy per accumulate, pJ (cmos) (``energy.ac``)."""
        return float(self.get("energy.ac"))

    def provenance(self, keys: list[str] | None = None) -> list[dict[str, Any]]:
        """``[{profile, key, value, unit, status, source}]`` for ``keys`` (default: all)."""
        keys = list(self.figures) if keys is None else keys
        return [{"profile": self.name, "key": k, **self.figure(k).to_dict()} for k in keys]


def _quantity_of_unit(unit: str) -> str | None:
    for quantity, table in UNITS.items():
        if unit in table and quantity not in ("bits", "flag"):
            return quantity
    return None


def _check_figure(key: str, raw: Any, spec: tuple[str, type, float] | None, where: str) -> Figure:
    """Validate one ``{value, unit, status, source}`` mapping; errors name ``key``."""
    if not isinstance(raw, dict):
        raise SpikedetError(f"{key}: expected a mapping {{value, unit, status, source}}", where)
    for part in ("value", "unit", "status", "source"):
        if part not in raw:
            raise SpikedetError(f"{key}.{part}: missing", where)
    extra = set(raw) - {"value", "unit", "status", "source"}
    if extra:
        raise SpikedetError(f"{key}: unknown field(s) {sorted(extra)}", where)
    value, unit, status, source = raw["value"], raw["unit"], raw["status"], raw["source"]
    if not isinstance(unit, str) or not unit.strip():
        raise SpikedetError(f"{key}.unit: must be a non-empty string", where)
    if status not in STATUSES:
        raise SpikedetError(
            f"{key}.status: unknown status {status!r}; use one of {STATUSES}", where
        )
    if not isinstance(source, str) or not source.strip():
        raise SpikedetError(f"{key}.source: must be a non-empty citation string", where)
    if spec is None:  # an extra figure: any number or flag, unit free
        if not isinstance(value, (int, float, bool)):
            raise SpikedetError(f"{key}.value: expected a number, got {value!r}", where)
        return Figure(value, unit, status, " ".join(source.split()))
    quantity, typ, minimum = spec
    if typ is bool:
        if not isinstance(value, bool):
            raise SpikedetError(f"{key}.value: expected true or false, got {value!r}", where)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpikedetError(f"{key}.value: expected a number, got {value!r}", where)
    elif not math.isfinite(value):  # YAML .nan / .inf pass every comparison below
        raise SpikedetError(f"{key}.value: must be finite, got {value!r}", where)
    elif typ is int and not float(value).is_integer():
        raise SpikedetError(f"{key}.value: expected an integer, got {value!r}", where)
    elif value < minimum or (minimum > 0 and value <= 0):
        bound = "positive" if minimum > 0 else "non-negative"
        if typ is int and minimum > 1:
            bound = f">= {int(minimum)}"
        raise SpikedetError(f"{key}.value: must be {bound}, got {value!r}", where)
    if quantity in UNITS and unit not in UNITS[quantity]:
        raise SpikedetError(
            f"{key}.unit: {unit!r} is not a {quantity} unit; use one of {sorted(UNITS[quantity])}",
            where,
        )
    if typ is int:
        value = int(value)
    return Figure(value, unit, status, " ".join(source.split()))


def parse_profile(data: Any, where: str) -> HardwareProfile:
    """Validate a parsed YAML document; every error names ``where`` (the file) and the field."""
    if not isinstance(data, dict):
        raise SpikedetError("a profile must be a YAML mapping", where)
    for key in ("name", "description", "kind"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            state = "missing" if key not in data else "must be a non-empty string"
            raise SpikedetError(f"{key}: {state}", where)
    kind = data["kind"]
    if kind not in KINDS:
        raise SpikedetError(f"kind: unknown kind {kind!r}; use one of {KINDS}", where)
    notices = data.get("notices", [])
    if not isinstance(notices, list) or not all(isinstance(n, str) for n in notices):
        raise SpikedetError("notices: must be a list of strings", where)
    required = REQUIRED[kind]
    figures: dict[str, Figure] = {}
    for section, body in data.items():
        if section in ("name", "description", "kind", "notices"):
            continue
        if not isinstance(body, dict):
            raise SpikedetError(f"{section}: expected a mapping of figures", where)
        for key, raw in body.items():
            full = f"{section}.{key}"
            spec = required.get(full) or CORE_MODEL_KEYS.get(full)
            if spec is None and full.startswith("partition.neurons_"):
                if full[len("partition.neurons_") :] not in PARTITION_KINDS:
                    raise SpikedetError(
                        f"{full}: unknown population kind; use one of {PARTITION_KINDS}", where
                    )
                spec = ("count", int, 1)
            figures[full] = _check_figure(full, raw, spec, where)
    for full in required:
        if full not in figures:
            raise SpikedetError(f"{full}: missing", where)
    if kind == "neuromorphic" and any(k in figures for k in CORE_MODEL_KEYS):
        for full in CORE_MODEL_KEYS:  # a partial core model is an error, not a fallback
            if full not in figures:
                raise SpikedetError(f"{full}: missing (the core model needs all of it)", where)
    return HardwareProfile(
        name=data["name"].strip(),
        description=" ".join(data["description"].split()),
        kind=kind,
        figures=figures,
        path=where,
        notices=[" ".join(n.split()) for n in notices],
    )


def _builtin_dir():
    return importlib.resources.files("spikedet.hardware_profiles")


def list_profiles() -> list[str]:
    """Names of the built-in profiles (the YAML files shipped in ``spikedet.hardware_profiles``)."""
    return sorted(
        p.name[: -len(".yaml")] for p in _builtin_dir().iterdir() if p.name.endswith(".yaml")
    )


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load a built-in profile by name ("loihi2", "loihi1", "cmos45nm") or a YAML file by path."""
    text_name = str(name_or_path)
    if text_name in list_profiles():
        resource = _builtin_dir() / f"{text_name}.yaml"
        where, text = str(resource), resource.read_text(encoding="utf-8")
    else:
        path = Path(text_name)
        if not (path.suffix in (".yaml", ".yml") or path.exists()):
            raise SpikedetError(
                f"unknown hardware profile {text_name!r}; built-in: {', '.join(list_profiles())}"
                " (or give a YAML path)",
                "profile",
            )
        if not path.is_file():
            raise SpikedetError("hardware profile file not found", str(path))
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SpikedetError(f"cannot read hardware profile: {err}", where) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpikedetError(f"bad YAML: {' '.join(str(err).split())}", where) from None
    return parse_profile(data, where)


def resolve_target(target: str) -> HardwareProfile:
    """A deploy ``--target``: "loihi2-sim" / "loihi1-sim", a built-in name, or a YAML path.

    Only neuromorphic profiles can be targets (a cmos profile has no cores to map onto).
    """
    profile = load_profile(TARGET_ALIASES.get(target, target))
    if profile.kind != "neuromorphic":
        raise SpikedetError(
            f"profile {profile.name!r} is a {profile.kind} energy model, not a mappable target",
            "--target",
        )
    return profile
