"""Issue 27, the command line's own failure paths: a torchrun environment without its
rendezvous variables (F18), file names that are not UTF-8 (F21), repeated signals
(F22), Typer / Click usage errors (F23), two directory runs into one output (the
per-output lock), the HDF5 suffixes of directory mode and corrupt checkpoints.

Every bad input is one ``error:`` line on stderr and exit 2; every signal is
``interrupted: ...`` and exit 130, however many follow. Signals go to real
subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from mrimsm.cli.main import main
from conftest import write_fake_fastmri
from test_train import toy_config  # registers the "toy-train" method

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ASSETS = REPO / "mrimsm" / "assets"
PYTHON = sys.executable

#: ``python -c DRIVER ARGS`` runs ``mrimsm ARGS`` with the test-only methods registered.
DRIVER = (
    "import sys; sys.path[:0] = [{repo!r}, {tests!r}]; import test_train; "
    "from mrimsm.cli.main import main; sys.exit(main(sys.argv[1:]))"
).format(repo=str(REPO), tests=str(TESTS))


def _env(**extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env.update(extra)
    return env


def _run(args: list, capsys) -> tuple[int, list[str], str]:
    """``mrimsm ARGS`` in-process: (exit code, stderr lines, stdout)."""
    rc = main([a if isinstance(a, str) else os.fspath(a) for a in args])
    out = capsys.readouterr()
    return rc, out.err.strip().splitlines(), out.out


def _one_error(rc: int, err: list[str], *needles: str) -> str:
    assert rc == 2, (rc, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def _files(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*")} if root.exists() else set()


def _toy_yaml(tmp_path: Path, **train) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(toy_config(**train).to_dict()))
    return path


# -- F18: WORLD_SIZE > 1 without torchrun's other variables ---------------------------------------


def test_train_world_size_without_master_addr_is_one_line(tmp_path):
    """The case of the issue, in a real process: ``WORLD_SIZE=2 RANK=0 mrimsm train``."""
    cfg = _toy_yaml(tmp_path)
    proc = subprocess.run([PYTHON, "-c", DRIVER, "train", str(cfg), "--out", str(tmp_path / "run"), "-q"],
                          env=_env(WORLD_SIZE="2", RANK="0"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "MASTER_ADDR" in err[0] and "torchrun" in err[0], err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("missing", ["MASTER_PORT", "RANK"])
def test_train_world_size_without_a_rendezvous_variable(tmp_path, capsys, monkeypatch, missing):
    cfg = _toy_yaml(tmp_path)
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29512"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv(missing)
    rc, err, _ = _run(["train", cfg, "--out", tmp_path / "run", "-q"], capsys)
    _one_error(rc, err, missing, "launch with torchrun")
    assert not (tmp_path / "run").exists()


def test_check_torchrun_env():
    from mrimsm.distributed import check_torchrun_env
    from mrimsm.errors import MrimsmError

    check_torchrun_env({})  # alone
    check_torchrun_env({"WORLD_SIZE": "1"})
    full = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "host", "MASTER_PORT": "29500"}
    check_torchrun_env(full)
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        with pytest.raises(MrimsmError, match=f"{key} is not; launch with torchrun"):
            check_torchrun_env({k: v for k, v in full.items() if k != key})
    with pytest.raises(MrimsmError, match="MASTER_PORT='x' is not a port number"):
        check_torchrun_env(dict(full, MASTER_PORT="x"))


# -- F21: file names that are not UTF-8 ------------------------------------------------------------

BAD_NAME = b"scan_\xff.h5"


def _bad_named_scan(folder: Path) -> Path:
    """A small scan whose file name holds the byte 0xff (valid on POSIX, not UTF-8)."""
    good = write_fake_fastmri(folder / "tmp_scan.h5", "full", num_slices=2, size=32, num_coils=4)
    target = os.path.join(os.fsencode(folder), BAD_NAME)
    os.rename(os.fsencode(good), target)
    return Path(os.fsdecode(target))


def test_recon_file_with_a_non_utf8_name(tmp_path, capsys, monkeypatch):
    src = _bad_named_scan(tmp_path / "in")
    out = tmp_path / "out.h5"
    rc, err, stdout = _run(["recon", src, "--accel", "4", "-m", "zero-filled", "-o", out, "-q",
                            "--png", tmp_path / "png"], capsys)
    assert rc == 0, err
    assert "scan_\\xff.h5: 2 slices" in stdout  # printed with an escape, not as a broken byte
    with h5py.File(out, "r") as f:
        assert f.attrs["source_file"] == "scan_\\xff.h5"
        assert np.isfinite(f["reconstruction"][()]).all()
    assert sorted(os.listdir(os.fsencode(tmp_path / "png"))) == [b"scan_\xff.zero-filled.slice000.png",
                                                                  b"scan_\xff.zero-filled.slice001.png"]
    # no -o: the output is named after the input, its bytes kept
    monkeypatch.chdir(tmp_path)
    rc, err, stdout = _run(["recon", src, "--accel", "4", "-m", "zero-filled", "-q"], capsys)
    assert rc == 0, err
    assert b"scan_\xff.zero-filled.h5" in os.listdir(os.fsencode(tmp_path))
    assert "wrote " in stdout and "scan_\\xff.zero-filled.h5" in stdout


def test_recon_dir_with_a_non_utf8_name(tmp_path, capsys):
    src = _bad_named_scan(tmp_path / "in")
    write_fake_fastmri(src.parent / "plain.h5", "full", num_slices=2, size=32, num_coils=4, seed=1)
    out = tmp_path / "out"
    args = ["recon", src.parent, "--accel", "4", "-m", "zero-filled", "-o", out, "-q"]
    rc, err, stdout = _run(args, capsys)
    assert rc == 0, (err, stdout)
    assert "2 done, 0 skipped" in stdout and "done    scan_\\xff.h5" in stdout
    assert sorted(os.listdir(os.fsencode(out))) == [b"plain.h5", BAD_NAME]
    rc, err, stdout = _run(args, capsys)  # the record matches: skipped
    assert rc == 0 and "0 done, 2 skipped" in stdout, stdout


def test_recon_non_utf8_name_under_a_strict_terminal(tmp_path):
    """A terminal that takes only UTF-8 (PYTHONIOENCODING=utf-8:strict): still one table, no traceback."""
    src = _bad_named_scan(tmp_path / "in")
    proc = subprocess.run([PYTHON, "-m", "mrimsm", "recon", os.fsencode(src), "--accel", "4", "-m", "zero-filled",
                           "-o", str(tmp_path / "o.h5"), "-q", "--threads", "1"],
                          env=_env(PYTHONIOENCODING="utf-8:strict"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "scan_\\xff.h5: 2 slices" in proc.stdout


def test_seed_for_is_unchanged_for_utf8_names():
    from mrimsm.physics.masks import seed_for

    assert seed_for("file1000001.h5", 3, 0) == 512731252  # the seed of before: valid names keep their masks
    assert seed_for(os.fsdecode(BAD_NAME), 0, 0) != seed_for("scan_.h5", 0, 0)
