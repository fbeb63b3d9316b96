"""Inputs are never replaced and write failures are one line: raw scans under prep's
OUT_DIR, checkpoints and settings named as recon's -o, special files and dangling links,
files mrimsm did not write, -o equal to --png, a full disk (recon, train)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mrimsm.cli.main import main
from conftest import write_fake_fastmri

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "mrimsm" / "assets"


def _run(args, capsys):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.err.strip().splitlines()


def _one_error(rc, err, *needles):
    assert rc == 2, (rc, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    for n in needles:
        assert n in err[0], (n, err[0])


@pytest.fixture
def scan(tmp_path) -> Path:
    return write_fake_fastmri(tmp_path / "in" / "scan.h5", "full", num_slices=2, size=32, num_coils=4)


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


@pytest.mark.parametrize("split", ["train", "val"])
def test_prep_never_writes_shards_over_its_raw_files(tmp_path, split, capsys):
    raw = tmp_path / "out" / split
    write_fake_fastmri(raw / "vol.h5", "full", num_slices=2, size=32, num_coils=4)
    before = _bytes(raw / "vol.h5")
    rc, err = _run(["prep-fastmri", raw, tmp_path / "out", "--size", "32", "-q"], capsys)
    _one_error(rc, err, f"is OUT_DIR/{split}", "would replace the raw files")
    assert _bytes(raw / "vol.h5") == before and sorted(os.listdir(raw)) == ["vol.h5"]


def test_prep_refuses_a_shard_path_linked_to_an_input(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_fake_fastmri(raw / "vol.h5", "full", num_slices=2, size=32, num_coils=4)
    (tmp_path / "out" / "train").mkdir(parents=True)
    os.link(raw / "vol.h5", tmp_path / "out" / "train" / "vol.h5")  # a hard link: same inode
    before = _bytes(raw / "vol.h5")
    rc, err = _run(["prep-fastmri", raw, tmp_path / "out", "--size", "32", "--val-fraction", "0", "--skip-last", "0", "-q"], capsys)
    _one_error(rc, err, "would replace the input")
    assert _bytes(raw / "vol.h5") == before


@pytest.mark.parametrize("option", ["--checkpoint", "--ssdu-checkpoint", "--settings"])
def test_recon_output_never_replaces_a_checkpoint_or_settings_file(tmp_path, scan, option, capsys):
    source = {"--checkpoint": ASSETS / "default_msm.pt", "--ssdu-checkpoint": ASSETS / "default_ssdu.pt",
              "--settings": ASSETS / "default_msm256.recon.yaml"}[option]
    victim = tmp_path / source.name
    shutil.copy(source, victim)
    before = _bytes(victim)
    method = "ssdu" if option == "--ssdu-checkpoint" else "msm"
    rc, err = _run(["recon", scan, "-R", "4", "-m", method, option, victim, "-o", victim, "-q"], capsys)
    _one_error(rc, err, "would overwrite the input", victim.name)
    assert _bytes(victim) == before


def test_recon_refuses_special_files_and_dangling_links(tmp_path, scan, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    rc, err = _run(["recon", scan, "-R", "4", "-m", "zero-filled", "-o", fifo, "-q"], capsys)
    _one_error(rc, err, "not a regular file")
    assert fifo.exists() and not fifo.is_file()
    rc, err = _run(["recon", scan, "-R", "4", "-m", "zero-filled", "-o", os.devnull, "-q"], capsys)
    _one_error(rc, err, "not a regular file")
    assert Path(os.devnull).is_char_device()
    link = tmp_path / "link.h5"
    link.symlink_to(tmp_path / "nowhere" / "x.h5")
    rc, err = _run(["recon", scan, "-R", "4", "-m", "zero-filled", "-o", link, "-q"], capsys)
    _one_error(rc, err, "dangling symbolic link")
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_recon_single_file_output_replaces_only_its_own_outputs(tmp_path, scan, capsys):
    other = write_fake_fastmri(tmp_path / "in" / "other_raw.h5", "full", num_slices=2, size=32, num_coils=4)
    before = _bytes(other)
    rc, err = _run(["recon", scan, "-R", "4", "-m", "zero-filled", "-o", other, "-q"], capsys)
    _one_error(rc, err, "is not a reconstruction mrimsm wrote", "--overwrite")
    assert _bytes(other) == before
    out = tmp_path / "out.h5"
    assert _run(["recon", scan, "-R", "4", "-m", "zero-filled", "-o", out, "-q"], capsys)[0] == 0
    assert _run(["recon", scan, "-R", "4", "-m", "cs", "-o", out, "-q"], capsys)[0] == 0  # its own: replaced
    assert _run(["recon", scan, "-R", "4", "-m", "zero-filled", "-o", other, "--overwrite", "-q"], capsys)[0] == 0


def test_recon_png_equal_to_output_is_refused_before_any_work(tmp_path, scan, capsys):
    target = tmp_path / "d" / "a.h5"
    rc, err = _run(["recon", scan, "-R", "4", "-m", "zero-filled", "-o", target, "--png", target, "-q"], capsys)
    _one_error(rc, err, "--png", "is also the output file")
    assert not (tmp_path / "d").exists()


def _fail_writes(monkeypatch, code: int) -> None:
    """h5py files opened for writing raise OSError(code), as on a full disk."""
    import h5py

    real = h5py.File

    def opener(name, mode="r", *a, **k):
        if mode in ("w", "w-", "x", "a"):
            raise OSError(code, os.strerror(code))
        return real(name, mode, *a, **k)

    monkeypatch.setattr(h5py, "File", opener)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_recon_write_failure_is_one_line_and_leaves_no_file(tmp_path, scan, monkeypatch, code, capsys):
    out = tmp_path / "out"
    _fail_writes(monkeypatch, code)
    rc, err = _run(["recon", scan, "-R", "4", "-m", "zero-filled", "-o", out / "x.h5", "-q"], capsys)
    _one_error(rc, err, "could not write", os.strerror(code))
    assert not out.exists() or not any(out.iterdir())


def test_checkpoint_write_failure_is_one_line(tmp_path, monkeypatch):
    import torch

    from mrimsm.checkpoint import save_checkpoint
    from mrimsm.errors import MrimsmError

    def broken(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", broken)
    fields = {k: {} for k in ("method", "step", "config", "meta", "model", "ema")}
    with pytest.raises(MrimsmError, match="could not write the checkpoint"):
        save_checkpoint(tmp_path / "last.pt", **fields)
    assert list(tmp_path.iterdir()) == []


def _small_tmpfs(path: Path, size: str = "300k") -> bool:
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_full_disk_with_a_real_tmpfs(tmp_path):
    """recon and train into a 300 KB tmpfs: one line, exit 2, no temporary left behind
    (skipped where tmpfs cannot be mounted: not root, or in a container that forbids it)."""
    import sys

    small = tmp_path / "small"
    if not _small_tmpfs(small):
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        big = write_fake_fastmri(tmp_path / "big.h5", "full", num_slices=4, size=128, num_coils=4)
        cmd = [sys.executable, "-m", "mrimsm.cli.main"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd + ["recon", str(big), "-R", "4", "-m", "zero-filled", "-m", "cs",
                                     "-o", str(small), "-q"], capture_output=True, text=True, env=env, timeout=300)
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(err) == 1 and "No space left on device" in err[0], done.stderr
        assert not [p for p in small.iterdir() if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(small)], capture_output=True, timeout=20)
