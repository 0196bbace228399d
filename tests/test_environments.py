"""The two-environment split: the hardware side imports without torch inside .venv-lava, the
package data ships, and `make setup` is idempotent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_deploy_and_sim_import_without_torch_in_lava_env(lava_python: Path) -> None:
    code = (
        "import sys, spikedet.deploy, spikedet.sim, spikedet.sim.qgraph;"
        "import spikedet.deploy.profiles, spikedet.deploy.nir_graph, spikedet.deploy.quantize;"
        "import spikedet.deploy.mapping.mapper, spikedet.deploy.energy, spikedet.deploy.report;"
        "import spikedet.sim.fixed, spikedet.sim.interface, spikedet.sim.registry, spikedet.sim.lava_engine;"
        "import numpy; assert numpy.__version__.startswith('1.'), numpy.__version__;"
        "assert sys.version_info[:2] == (3, 10), sys.version;"
        "assert 'torch' not in sys.modules, 'torch was imported'; print('ok')"
    )
    out = subprocess.run([str(lava_python), "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_hardware_side_imports_without_torch_in_core_env() -> None:
    code = (
        "import sys, spikedet.deploy.pipeline, spikedet.sim.fixed, spikedet.sim.reference,"
        " spikedet.sim.lava_engine, spikedet.detection, spikedet.metrics.coco_map;"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "spikedet").rglob("__init__.py")
    }
    assert found <= listed, f"add to pyproject.toml [tool.setuptools] packages: {found - listed}"
    assert "spikedet.hardware_profiles" in listed


def test_profiles_are_package_data() -> None:
    from importlib.resources import files

    names = {p.name for p in files("spikedet.hardware_profiles").iterdir()}
    assert {"loihi2.yaml", "loihi1.yaml", "cmos45nm.yaml"} <= names


def test_make_setup_is_up_to_date() -> None:
    # `make -q` exits 0 only when the install stamps are newer than pyproject.toml, i.e. a
    # second `make setup` has nothing to do.
    stamps = [".venv/.spikedet-installed"]
    if (REPO / ".venv-lava" / ".spikedet-installed").exists():
        stamps.append(".venv-lava/.spikedet-installed")
    out = subprocess.run(["make", "-q", *stamps], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, "make setup would rebuild an environment"


def test_wheel_ships_hardware_profiles(tmp_path: Path) -> None:
    import zipfile

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("spikedet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for profile in ("loihi2.yaml", "loihi1.yaml", "cmos45nm.yaml"):
        assert f"spikedet/hardware_profiles/{profile}" in names
    assert "spikedet/sim/lava_worker.py" in names
    # the compiled .dat decoder (setup.py), so a pip-installed reader is as fast as ours
    assert any(n.startswith("spikedet/data/_datdecode") and n.endswith(".so") for n in names)
