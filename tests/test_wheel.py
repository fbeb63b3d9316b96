"""The wheel: it carries every file the installed code reads at run time, and an install of
it (non-editable, a fresh virtualenv) reconstructs a 256 x 256 scan with the shipped prior
and its solver settings from a directory outside the source tree, nothing from the checkout
on the path.

Offline: the wheel is built with this interpreter's pip and setuptools (no build isolation,
no index); the fresh virtualenv reuses this environment's packages through a ``.pth`` line
(the dependencies), and mrimsm itself comes from the wheel only (checked).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "mrimsm" / "assets"


def _run(args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1")
    proc = subprocess.run([str(a) for a in args], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args[:4]} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built from a copy of what the build reads (setuptools
    writes build/ and *.egg-info beside the sources, and a stale build/ could hide a
    missing file)."""
    pytest.importorskip("setuptools.command.bdist_wheel", reason="needs setuptools >= 70.1 (the test extra)")
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("mrimsm", "cli"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", root / "dist", src], cwd=root)
    (whl,) = (root / "dist").glob("mrimsm-*.whl")
    return whl


def test_the_wheel_carries_the_runtime_files(wheel):
    from mrimsm.diffusion.shipped import SHIPPED_PRIORS, SHIPPED_SSDU

    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"mrimsm/assets/{p.file}" for p in (*SHIPPED_PRIORS, *SHIPPED_SSDU)}
    shipped |= {f"mrimsm/assets/{p.settings}" for p in SHIPPED_PRIORS if p.settings}
    assert "mrimsm/assets/default_msm256.recon.yaml" in shipped
    assets = {f"mrimsm/assets/{p.name}" for p in ASSETS.iterdir() if p.is_file()}
    assert shipped <= assets
    assert assets <= names, sorted(assets - names)  # the checkpoints, settings, configs, logs
    assert {"mrimsm/cli/main.py", "mrimsm/cli/recon_cmd.py"} <= names
    assert not any(n.startswith(("cli/", "configs/", "training/", "tests/")) for n in names)
    init = zipfile.ZipFile(wheel).read("mrimsm/cli/__init__.py").decode()
    assert "parents[" not in init  # cli/__init__.py, not the source checkout's stub


def test_an_installed_wheel_reconstructs_a_256_scan_with_its_own_files(wheel, tmp_path):
    from mrimsm.data.simulate import mni_split_indices, simulate_volume_file
    from mrimsm.recon.outputs import RECORD_ATTR

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).stdout.strip())
    # the dependencies (torch, sigpy, ...) and pip from this environment; its .pth files are not
    # processed from there, so this environment's (editable) mrimsm is not importable through it
    reused = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (site / "reuse_test_env.pth").write_text("".join(f"{p}\n" for p in reused))
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel], tmp_path)
    where = _run([py, "-c", "import mrimsm, mrimsm.cli.main as m; print(mrimsm.__file__); print(m.__file__)"],
                 tmp_path).stdout.split()
    assert all(Path(p).resolve().is_relative_to(site.resolve()) for p in where), where

    scan = simulate_volume_file(tmp_path / "scan256.h5", "axial", mni_split_indices("axial", "heldout")[4:5], 256, 4,
                                0.01, True, seed=3, pixel="native")
    run = tmp_path / "run"  # outside the source tree, no PYTHONPATH
    run.mkdir()
    proc = _run([venv / "bin" / "mrimsm", "recon", scan, "--accel", "6", "-o", "out.h5", "--method", "msm",
                 "--steps", "2", "--w", "1", "--samples", "1", "--cs-iters", "10", "--threads", "1", "-q"], run)
    out = proc.stdout
    assert "msm model: shipped 256 x 256 brain prior default_msm256.pt" in out, out
    # init cs at t0 0.05 come from the installed default_msm256.recon.yaml (the defaults: sense at 0.3)
    assert "solver mrimsm/assets/default_msm256.recon.yaml: 2 steps, w 1, 1 samples, start cs at t0 0.05" in out, out
    with h5py.File(run / "out.h5") as f:
        rec = f["reconstruction"][()]
        record = json.loads(f.attrs[RECORD_ATTR])
    assert rec.shape == (1, 256, 256) and np.isfinite(rec).all() and rec.max() > 0
    ckpt = Path(record["settings"]["shipped_checkpoint default_msm256.pt"])  # the installed checkpoint
    assert ckpt.resolve().is_relative_to(site.resolve()), ckpt
    assert record["settings"]["shipped_settings default_msm256.pt"]["init"] == "cs"
