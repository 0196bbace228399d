"""Hardware profiles: the built-in YAML files, user files, and errors naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spikedet.deploy.profiles import (
    REQUIRED,
    STATUSES,
    list_profiles,
    load_profile,
    resolve_target,
)
from spikedet.errors import SpikedetError

BUILTIN = ("loihi2", "loihi1", "cmos45nm")


def test_builtins_listed_and_every_figure_has_provenance() -> None:
    assert set(BUILTIN) <= set(list_profiles())
    for name in BUILTIN:
        prof = load_profile(name)
        assert prof.name == name and prof.kind in ("neuromorphic", "cmos")
        assert set(REQUIRED[prof.kind]) <= set(prof.figures)
        for key, fig in prof.figures.items():
            assert fig.unit and fig.source.strip(), key
            assert fig.status in STATUSES, key
            assert isinstance(fig.value, (int, float, bool)), key
        # The raw YAML really carries all four fields for every figure (not defaults).
        raw = yaml.safe_load(Path(prof.path).read_text())
        for section, body in raw.items():
            if isinstance(body, dict):
                for key, fig in body.items():
                    assert set(fig) == {"value", "unit", "status", "source"}, f"{section}.{key}"


def test_builtin_values_match_the_reference() -> None:
    l1, l2, cm = load_profile("loihi1"), load_profile("loihi2"), load_profile("cmos45nm")
    assert (l1.neurons_per_core, l1.cores_per_chip, l1.fan_in_axons, l1.fan_out_axons) == (
        1024,
        128,
        4096,
        4096,
    )
    assert l1.synaptic_memory_bits == 128 * 1024 * 8
    assert (l1.e_synop_pj, l1.e_neuron_active_pj, l1.e_neuron_inactive_pj) == (23.6, 81, 52)
    assert l1.figure("energy.synop").status == "pre-silicon"
    assert l1.delay_bits == 6 and l1.weight_bits == 9 and not l1.conv_weight_sharing
    # Loihi 2: calibrated on Lava's compiler tables and PilotNet silicon (issue 15)
    assert l2.neurons_per_core == 4096 and l2.weight_bits == 8 and l2.message_bits == 24
    assert l2.state_bits == 24 and l2.decay_bits == 12 and l2.delay_bits == 6
    assert l2.synaptic_memory_bits == 12000 * 64
    assert l2.figure("core.synaptic_memory").status == "derived"
    assert l2.figure("precision.conv_weight_sharing").status == "derived"
    assert l2.figure("chip.static_power").status == "measured" and l2.static_power_mw == 232.078
    assert l2.figure("timing.step_time").status == "measured" and l2.step_time_us == 152.8
    assert l2.figure("core.fan_in_axons").status == "assumed"
    assert l2.figure("energy.synop").status == "assumed"
    assert "proxy" in l2.figure("energy.synop").source
    assert any("0.75 V" in n for n in l2.notices) and any("0.75 V" in n for n in l1.notices)
    assert (cm.e_mac_pj, cm.e_ac_pj) == (4.6, 0.9) and cm.kind == "cmos"
    # canonical units: time in us, power in mW
    assert l1.step_time_us == 13 and l1.static_power_mw == 104


def test_resolve_target_aliases_and_rejects_cmos() -> None:
    assert resolve_target("loihi2-sim").name == "loihi2"
    assert resolve_target("loihi1-sim").name == "loihi1"
    assert resolve_target("loihi2").name == "loihi2"
    with pytest.raises(SpikedetError, match="not a mappable target"):
        resolve_target("cmos45nm")
    with pytest.raises(SpikedetError, match="unknown hardware profile"):
        resolve_target("loihi9")


def _user_copy(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(Path(load_profile("loihi2").path).read_text())
    edit(data)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_yaml_path_with_unit_conversion(tmp_path: Path) -> None:
    def edit(d: dict) -> None:
        d["name"] = "custom"
        d["core"]["neurons_per_core"]["value"] = 2048
        d["core"]["synaptic_memory"].update(value=64, unit="bytes")
        d["energy"]["synop"].update(value=0.02, unit="nJ")
        d["timing"]["step_time"].update(value=2, unit="ms")

    path = _user_copy(tmp_path, edit)
    for prof in (load_profile(str(path)), resolve_target(str(path))):
        assert prof.name == "custom" and prof.path == str(path)
        assert prof.neurons_per_core == 2048
        assert prof.synaptic_memory_bits == 512
        assert prof.e_synop_pj == pytest.approx(20.0)
        assert prof.step_time_us == pytest.approx(2000.0)


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["core"].pop("neurons_per_core"), "core.neurons_per_core: missing"),
        (lambda d: d["core"]["fan_in_axons"].update(value=-5), "core.fan_in_axons.value"),
        (lambda d: d["chip"]["cores_per_chip"].update(value=0), "chip.cores_per_chip.value"),
        (lambda d: d["energy"]["synop"].update(value=-1.0), "energy.synop.value"),
        (lambda d: d["core"]["neurons_per_core"].update(value="many"), "core.neurons_per_core"),
        (lambda d: d["core"]["neurons_per_core"].update(value=10.5), "core.neurons_per_core"),
        (lambda d: d["precision"]["conv_weight_sharing"].update(value=1), "conv_weight_sharing"),
        (lambda d: d["energy"]["synop"].update(status="guessed"), "energy.synop.status"),
        (lambda d: d["energy"]["synop"].pop("source"), "energy.synop.source: missing"),
        (lambda d: d["energy"]["synop"].update(unit="parsecs"), "energy.synop.unit"),
        (lambda d: d.update(kind="quantum"), "kind"),
        (lambda d: d.pop("name"), "name: missing"),
    ],
)
def test_bad_fields_name_file_and_field(tmp_path: Path, edit, field: str) -> None:
    path = _user_copy(tmp_path, edit)
    with pytest.raises(SpikedetError) as info:
        load_profile(str(path))
    assert field in info.value.what
    assert info.value.where == str(path)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncore: [unclosed\n")
    with pytest.raises(SpikedetError, match="bad YAML") as info:
        load_profile(str(bad))
    assert info.value.where == str(bad)
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpikedetError, match="not found") as info:
        load_profile(str(missing))
    assert info.value.where == str(missing)
    not_a_mapping = tmp_path / "list.yaml"
    not_a_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(SpikedetError, match="mapping"):
        load_profile(str(not_a_mapping))
