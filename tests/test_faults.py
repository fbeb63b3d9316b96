"""Failure paths: outputs checked before any work, interrupts that save and say
what finished, size guards, skip-done that checks what was done, and a fuzz loop of
corrupted inputs. Every failure is one ``error:`` line with exit 2 (``interrupted:`` and
130 for a signal), never a traceback, never a partial file."""

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
import torch
import yaml

from mrimsm.cli.main import main
from conftest import write_fake_fastmri
from test_train import toy_config  # registers the "toy-train" method

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ASSETS = REPO / "mrimsm" / "assets"


def _files(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*")} if root.exists() else set()


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


@pytest.fixture
def scan(tmp_path) -> Path:
    """A small fully sampled fastMRI-style file: 2 slices, 4 coils, 32 x 32 (readout 64)."""
    return write_fake_fastmri(tmp_path / "in" / "scan.h5", "full", num_slices=2, size=32, num_coils=4)


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("a regular file\n")
    return path


# -- 1. output paths are checked before any work ---------------------------------------------


def test_recon_output_under_a_file(tmp_path, scan, a_file, capsys):
    before = _files(tmp_path)
    rc, err, _ = _run(["recon", scan, "--accel", "4", "-m", "zero-filled", "-o", a_file / "x.h5", "-q"], capsys)
    _one_error(rc, err, "notes.txt is a file, not a directory")
    assert _files(tmp_path) == before


def test_recon_png_under_a_file_writes_no_h5(tmp_path, scan, a_file, capsys):
    out = tmp_path / "out" / "x.h5"
    rc, err, _ = _run(["recon", scan, "--accel", "4", "-m", "zero-filled", "-o", out, "--png", a_file / "png",
                       "-q"], capsys)
    _one_error(rc, err, "--png", "is a file, not a directory")
    assert not out.exists() and not out.parent.exists()


def test_recon_output_is_a_directory_for_one_method(tmp_path, scan, capsys):
    # one method and an existing directory: the output goes inside it (documented), so
    # only a directory where the *file* must go is refused
    (tmp_path / "d" / "scan.zero-filled.h5").mkdir(parents=True)
    rc, err, _ = _run(["recon", scan, "--accel", "4", "-m", "zero-filled", "-o", tmp_path / "d", "-q"], capsys)
    _one_error(rc, err, "is a directory")


def test_recon_dir_checks_the_output_before_any_file(tmp_path, scan, a_file, capsys, monkeypatch):
    import mrimsm.recon.file as recon_file

    calls = []
    monkeypatch.setattr(recon_file, "prepare_volume", lambda *a, **k: calls.append(a) or 1 / 0)
    rc, err, _ = _run(["recon", scan.parent, "-m", "zero-filled", "--accel", "4", "-o", a_file / "out", "-q"],
                      capsys)
    _one_error(rc, err, "is a file, not a directory")
    rc, err, _ = _run(["recon", scan.parent, "-m", "zero-filled", "--accel", "4", "-o", tmp_path / "o",
                       "--png", a_file / "png", "-q"], capsys)
    _one_error(rc, err, "--png")
    assert calls == [] and not (tmp_path / "o").exists()


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_recon_dir_output_not_writable(tmp_path, scan, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc, err, _ = _run(["recon", scan.parent, "-m", "zero-filled", "--accel", "4", "-o", locked / "out", "-q"],
                          capsys)
        _one_error(rc, err, "not writable")
    finally:
        locked.chmod(0o700)


def test_sample_output_under_a_file(tmp_path, a_file, capsys):
    before = _files(tmp_path)
    rc, err, _ = _run(["sample", ASSETS / "default_msm.pt", "-o", a_file / "s.h5", "-q"], capsys)
    _one_error(rc, err, "is a file, not a directory")
    assert _files(tmp_path) == before


def test_sample_png_name_writes_one_pair(tmp_path, capsys):
    rc, err, _ = _run(["sample", ASSETS / "default_msm.pt", "-o", tmp_path / "x.png", "-n", "1", "--steps", "2",
                       "--device", "cpu", "-q"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5", "x.png"]


def test_restore_output_under_a_file(tmp_path, a_file, capsys):
    from PIL import Image

    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    before = _files(tmp_path)
    rc, err, _ = _run(["restore", img, "-o", a_file / "r.png", "--task", "inpaint-box", "-q"], capsys)
    _one_error(rc, err, "is a file, not a directory")
    assert _files(tmp_path) == before


def _toy_yaml(tmp_path: Path, **train) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(toy_config(**train).to_dict()))
    return path


def test_train_out_under_a_file(tmp_path, a_file, capsys):
    cfg = _toy_yaml(tmp_path)
    before = _files(tmp_path)
    rc, err, _ = _run(["train", cfg, "--out", a_file / "run", "-q"], capsys)
    _one_error(rc, err, "--out", "is a file, not a directory")
    rc, err, _ = _run(["train", cfg, "--out", a_file, "-q"], capsys)
    _one_error(rc, err, "--out", "is a file, not a directory")
    assert _files(tmp_path) == before


def test_prep_out_under_a_file(tmp_path, scan, a_file, capsys):
    rc, err, _ = _run(["prep-fastmri", scan.parent, a_file / "out", "--size", "32", "-q"], capsys)
    _one_error(rc, err, "OUT_DIR", "is a file, not a directory")


# -- 6. the minor items ------------------------------------------------------------------------


def test_simulated_size_is_validated_with_the_config(tmp_path):
    from mrimsm.config import load_config
    from mrimsm.errors import MrimsmError

    d = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    d["data"]["simulated"]["size"] = 60
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(d))
    with pytest.raises(MrimsmError, match=r"data\.simulated\.size.*multiple of 16") as exc:
        load_config(path)
    assert "--size" not in str(exc.value)


def test_ssdu_checkpoint_to_msm_names_the_right_flag(scan, tmp_path, capsys):
    rc, err, _ = _run(["recon", scan, "--accel", "4", "-m", "msm", "--checkpoint", ASSETS / "default_ssdu.pt",
                       "-o", tmp_path / "x.h5", "-q", "--device", "cpu"], capsys)
    line = _one_error(rc, err, "not an msm one", "-m ssdu --ssdu-checkpoint")
    assert "sampling" not in line


def test_directory_as_config(tmp_path, capsys):
    rc, err, _ = _run(["train", REPO / "configs", "--out", tmp_path / "run"], capsys)
    _one_error(rc, err, "is a directory")


def test_resumed_manifest_keeps_espirit(tmp_path):
    from mrimsm.data.prep import PrepOptions, prepare_dataset

    for i in range(2):
        write_fake_fastmri(tmp_path / "raw" / f"v{i}.h5", "full", num_slices=1, size=64, num_coils=4, seed=i)
    opts = PrepOptions(size=64, skip_last=0, val_fraction=0.0, espirit_coarse=2)
    first = prepare_dataset(tmp_path / "raw", tmp_path / "out", opts, on_warning=lambda m: None)
    again = prepare_dataset(tmp_path / "raw", tmp_path / "out", opts, on_warning=lambda m: None)
    assert again["counts"]["files_resumed"] == 2
    assert [s["espirit"] for s in again["shards"]] == [s["espirit"] for s in first["shards"]]


def test_noop_resume_leaves_the_run_alone(tmp_path, capsys):
    cfg = _toy_yaml(tmp_path, max_steps=2, ckpt_every=1)
    run = tmp_path / "run"
    assert _run(["train", cfg, "--out", run, "-q"], capsys)[0] == 0
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    (run / "config.yaml").write_text((run / "config.yaml").read_text())  # touch: any rewrite shows
    stamps[run / "config.yaml"] = (run / "config.yaml").stat().st_mtime_ns
    time.sleep(0.01)
    rc, err, _ = _run(["train", cfg, "--out", run, "--resume", "--max-steps", "2", "-q"], capsys)
    assert rc == 0 and "nothing to do" in " ".join(err)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == stamps


def test_failed_prep_leaves_no_empty_directory(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_fake_fastmri(raw / "bad.h5", "truncated", num_slices=1, size=32, num_coils=4)
    rc, err, _ = _run(["prep-fastmri", raw, tmp_path / "out" / "deeper", "--size", "32", "-q"], capsys)
    assert rc == 2 and err[-1].startswith("error: ") and "no usable file" in err[-1]
    assert not (tmp_path / "out").exists()


# -- 5. interrupts: a real signal to a subprocess ------------------------------------------------

#: ``python -c DRIVER ARGS`` runs ``mrimsm ARGS`` with the test-only methods registered.
DRIVER = (
    "import sys; sys.path[:0] = [{repo!r}, {tests!r}]; import test_train; "
    "from mrimsm.cli.main import main; sys.exit(main(sys.argv[1:]))"
).format(repo=str(REPO), tests=str(TESTS))


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited early ({proc.returncode}): {err[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_train_signal_saves_and_resume_matches_an_uninterrupted_run(tmp_path, sig):
    from mrimsm.checkpoint import load_checkpoint
    from mrimsm.train import train

    cfg = _toy_yaml(tmp_path, max_steps=1_000_000, ckpt_every=0, log_every=50)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "train", str(cfg), "--out", str(run), "-q", "--threads", "1"],
        env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    log = run / "log.jsonl"
    _wait_for(lambda: log.exists() and log.stat().st_size > 0, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"interrupted: {sig.name} at step "), lines
    assert "Traceback" not in err and "--resume" in lines[0] and str(run / "last.pt") in lines[0]
    step = int(lines[0].split(" at step ")[1].split()[0])
    assert 50 <= step < 1_000_000
    assert load_checkpoint(run / "last.pt")["step"] == step
    # resume to step + 3 and compare with a run that was never interrupted
    resumed = train(toy_config(max_steps=step + 3, ckpt_every=0, log_every=50), run, resume=True,
                    echo=lambda m: None)
    full = train(toy_config(max_steps=step + 3, ckpt_every=0, log_every=50), tmp_path / "full",
                 echo=lambda m: None)
    assert resumed.start_step == step and resumed.losses == full.losses[step:]
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _scans(folder: Path, n: int, slices: int = 2) -> Path:
    for i in range(n):
        write_fake_fastmri(folder / f"s{i}.h5", "full", num_slices=slices, size=32, num_coils=4, seed=i)
    return folder


def _no_partial(folder: Path) -> None:
    """Every file under ``folder`` is whole: no temp file, every .h5 opens."""
    for p in folder.rglob("*"):
        assert not p.name.endswith(".tmp"), p
        if p.suffix == ".h5":
            with h5py.File(p, "r") as f:
                assert len(f.keys()) > 0


def test_recon_dir_sigint_says_what_finished_and_rerun_finishes(tmp_path):
    src = _scans(tmp_path / "in", 4)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mrimsm.cli.main", "recon", str(src), "-o", str(out), "-m", "cs", "--cs-iters", "150",
           "--accel", "4", "-q", "--threads", "1"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: out.is_dir() and any(out.glob("*.h5")), proc)
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "files finished" in last and "not done" in last, last
    finished = int(last.split("interrupted: ")[1].split()[0])
    assert 1 <= finished < 4 and len(list(out.glob("*.h5"))) == finished  # what it says is what is there
    assert stdout.count("done    ") in (finished, finished - 1)  # the last may land with the signal
    _no_partial(out)
    # the same command finishes the rest and skips what was done
    rerun = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{4 - finished} done, {finished} skipped" in rerun.stdout
    assert sorted(p.name for p in out.iterdir()) == [f"s{i}.h5" for i in range(4)]
    _no_partial(out)


def test_prep_sigint_says_what_finished_and_rerun_resumes(tmp_path):
    raw = tmp_path / "raw"
    for i in range(4):
        write_fake_fastmri(raw / f"v{i}.h5", "full", num_slices=2, size=64, num_coils=4, seed=i)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mrimsm.cli.main", "prep-fastmri", str(raw), str(out), "--size", "64",
           "--skip-last", "0", "--val-fraction", "0", "--espirit-coarse", "1", "-q", "--threads", "1"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any((out / "train").glob("v*.h5")) if (out / "train").is_dir() else False, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and "files prepared" in last and "rerun" in last, last
    prepared = int(last.split("interrupted: ")[1].split()[0])
    assert 1 <= prepared < 4 and len(list((out / "train").glob("*.h5"))) == prepared
    assert not (out / "manifest.json").exists()
    _no_partial(out)
    rerun = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({prepared} resumed" in rerun.stdout
    _no_partial(out)


# -- 4. skip-done checks what was done -------------------------------------------------------------


def _recon_dir(capsys, src: Path, out: Path, *extra) -> tuple[int, list[str], str]:
    return _run(["recon", src, "-o", out, "-m", "zero-filled", "-q", *extra], capsys)


def test_skip_only_what_was_done_with_the_same_settings(tmp_path, capsys):
    src, out = _scans(tmp_path / "in", 2), tmp_path / "out"
    rc, err, stdout = _recon_dir(capsys, src, out, "--accel", "4")
    assert rc == 0 and "2 done, 0 skipped" in stdout
    rc, err, stdout = _recon_dir(capsys, src, out, "--accel", "4")
    assert rc == 0 and "0 done, 2 skipped" in stdout
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    # another acceleration or seed: refused before any work, one line, nothing touched
    for extra, what in ((["--accel", "2"], "accel 4.0 -> 2.0"), (["--accel", "4", "--seed", "3"], "seed 0 -> 3")):
        rc, err, stdout = _recon_dir(capsys, src, out, *extra)
        _one_error(rc, err, "was made with other settings", what, "--overwrite")
        assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    rc, err, stdout = _recon_dir(capsys, src, out, "--accel", "2", "--overwrite")
    assert rc == 0 and "2 done, 0 skipped" in stdout
    rc, err, stdout = _recon_dir(capsys, src, out, "--accel", "2")
    assert rc == 0 and "0 done, 2 skipped" in stdout


def test_method_options_count_and_other_methods_do_not(tmp_path, capsys):
    src, out = _scans(tmp_path / "in", 1), tmp_path / "out"
    args = ["recon", src, "-o", out, "-m", "cs", "--accel", "4", "-q", "--cs-iters", "3"]
    assert _run(args, capsys)[0] == 0
    rc, err, _ = _run(args[:-1] + ["4"], capsys)
    _one_error(rc, err, "settings.iters 3 -> 4")


def test_truncated_or_incomplete_output_is_redone(tmp_path, capsys):
    src, out = _scans(tmp_path / "in", 3), tmp_path / "out"
    assert _recon_dir(capsys, src, out, "--accel", "4")[0] == 0
    data = (out / "s0.h5").read_bytes()
    (out / "s0.h5").write_bytes(data[: len(data) // 2])  # truncated
    with h5py.File(out / "s1.h5", "a") as f:  # one slice short
        rec = f["reconstruction"][()]
        del f["reconstruction"]
        f["reconstruction"] = rec[:1]
    rc, err, stdout = _recon_dir(capsys, src, out, "--accel", "4")
    assert rc == 0 and "2 done, 1 skipped" in stdout, stdout
    assert "redid s0.h5: it does not open cleanly" in stdout and "redid s1.h5: it holds a reconstruction" in stdout
    _no_partial(out)
    assert _recon_dir(capsys, src, out, "--accel", "4")[2].count("skipped s") == 3


def test_output_without_a_record_is_not_replaced_unasked(tmp_path, capsys):
    src, out = _scans(tmp_path / "in", 1), tmp_path / "out"
    out.mkdir()
    with h5py.File(out / "s0.h5", "w") as f:
        f["reconstruction"] = np.ones((2, 32, 32), np.float32)
    rc, err, _ = _recon_dir(capsys, src, out, "--accel", "4")
    _one_error(rc, err, "has no settings record", "--overwrite")
    with h5py.File(out / "s0.h5", "r") as f:
        assert float(f["reconstruction"][0, 0, 0]) == 1.0


def test_msm_record_takes_every_solver_setting_and_the_checkpoint_hash():
    from dataclasses import fields

    from mrimsm.diffusion.posterior import PosteriorSettings
    from mrimsm.recon.msm import MSMRecon
    from mrimsm.recon import ReconOptions
    from mrimsm.recon.outputs import file_sha256, output_record

    job = ReconOptions(["msm"], 4).resolved()
    opts = {"device": "cpu", "steps": 7, "checkpoint": str(ASSETS / "default_msm.pt")}
    rec = output_record("msm", MSMRecon(opts), opts, job)
    assert {f.name for f in fields(PosteriorSettings)} <= set(rec["settings"]) and rec["settings"]["steps"] == 7
    assert rec["checkpoint_sha256"] == {"checkpoint": file_sha256(ASSETS / "default_msm.pt")}
    # no --checkpoint: the scan's size picks a shipped model, so every installed one counts
    rec = output_record("msm", MSMRecon({"device": "cpu"}), {"device": "cpu"}, job)
    assert file_sha256(ASSETS / "default_msm.pt") in rec["checkpoint_sha256"].values()


# -- 3. memory guard -----------------------------------------------------------------------------


def test_restore_refuses_what_would_not_fit_in_one_line(tmp_path, capsys, monkeypatch):
    from PIL import Image

    import mrimsm.limits as memory

    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(img)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 300 * 2**20)  # a 300 MiB machine
    before = _files(tmp_path)
    t0 = time.perf_counter()
    rc, err, _ = _run(["restore", img, "-o", tmp_path / "r.png", "--task", "inpaint-box", "-k", "2", "-q"], capsys)
    line = _one_error(rc, err, "a 256 x 256 image needs about", "GiB free", "the largest that fits is about",
                      "with --samples 1")
    assert time.perf_counter() - t0 < 20 and _files(tmp_path) == before
    side = int(line.split("the largest that fits is about ")[1].split(" x ")[0])
    assert 0 < side < 256 and side % 4 == 0
    rc, err, _ = _run(["restore", img, "-o", tmp_path / "r.png", "--task", "sr4", "-q"], capsys)
    _one_error(rc, err, "an sr4 input of 256 x 256 (1024 x 1024 restored)")


def test_memory_estimate_grows_as_attention_does():
    from mrimsm.inference import load_msm
    from mrimsm.models.memory import forward_bytes, largest_square

    net = load_msm(ASSETS / "default_images.pt").denoiser.backbone
    small, big = forward_bytes(net, (256, 256)), forward_bytes(net, (512, 512))
    assert 8 < big / small < 16  # between the pixels' 4x and the attention's 16x
    assert forward_bytes(net, (256, 256), batch=4) > 3 * small
    side = largest_square(net, small, 1, net.divisor)
    assert side % net.divisor == 0 and forward_bytes(net, (side, side)) <= small < forward_bytes(
        net, (side + net.divisor,) * 2)


@pytest.mark.slow
def test_memory_estimate_is_within_a_factor_of_two_of_the_peak_rss(tmp_path):
    """One reverse step of restore at 384 x 384: estimated vs measured peak RSS less the
    process's own (imports, model) RSS."""
    from PIL import Image

    from mrimsm.inference import load_msm
    from mrimsm.models.memory import forward_bytes

    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((384, 384, 3), np.uint8)).save(img)
    code = (
        "import resource, sys; sys.path.insert(0, {repo!r}); from mrimsm.cli.main import main; "
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "import mrimsm.restore, mrimsm.inference; base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "rc = main(sys.argv[1:]); print('RSS', base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); "
        "sys.exit(rc)"
    ).format(repo=str(REPO))
    out = subprocess.run([sys.executable, "-c", code, "restore", str(img), "-o", str(tmp_path / "o.png"), "--task",
                          "inpaint-box", "--steps", "1", "--w", "1", "-k", "1", "--threads", "1", "-q"],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    base, peak = (int(x) * 1024 for x in out.stdout.split("RSS")[1].split())
    est = forward_bytes(load_msm(ASSETS / "default_images.pt").denoiser.backbone, (384, 384))
    assert 0.5 < est / (peak - base) < 2.0, (est, peak - base)


# -- the fuzz loop: randomly corrupted HDF5 inputs through recon and prep-fastmri -------------------

FUZZ_KINDS = ("truncate", "flip_bytes", "dtype", "shape", "nan_inf", "missing_key", "zeros", "reference",
              "mask", "header", "attrs", "scale")


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory) -> dict:
    """A valid file (2 slices, 4 coils, 32 x 32, readout 64) and its contents."""
    path = write_fake_fastmri(tmp_path_factory.mktemp("fuzz") / "base.h5", "full", num_slices=2, size=32,
                              num_coils=4)
    with h5py.File(path, "r") as f:
        data = {k: f[k][()] for k in f}
        attrs = dict(f.attrs)
    return {"path": path, "bytes": path.read_bytes(), "data": data, "attrs": attrs}


def _corrupt(case: int, base: dict, path: Path) -> str:
    """Write corruption number ``case`` of ``base`` to ``path``; return what was done."""
    rng = np.random.default_rng(1000 + case)
    kind = FUZZ_KINDS[case % len(FUZZ_KINDS)]
    raw = bytearray(base["bytes"])
    if kind == "truncate":
        cut = int(len(raw) * rng.uniform(0.02, 0.98))
        path.write_bytes(bytes(raw[:cut]))
        return f"truncated to {cut} of {len(raw)} bytes"
    if kind == "flip_bytes":
        n = int(rng.integers(1, 80))
        where = rng.integers(0, len(raw), n)
        for w in where:
            raw[w] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(raw))
        return f"{n} bytes flipped"
    data = {k: np.array(v) for k, v in base["data"].items()}
    attrs = dict(base["attrs"])
    k = data["kspace"]
    choice = int(rng.integers(0, 8))
    if kind == "dtype":
        data["kspace"] = [np.abs(k).astype(np.float32), k.real.astype(np.float64), (k.real * 100).astype(np.int16),
                          k.astype(np.complex128), np.abs(k) > 0.1, np.stack([k.real, k.imag], -1),
                          np.full(k.shape, b"x", dtype="S1"), k.astype(np.complex64)][choice]
    elif kind == "shape":
        data["kspace"] = [k[0], k[..., None], k[:0], k[:, :, :1, :1], k[..., :3], k[:, :1],
                          k[:, :, :63], np.moveaxis(k, 1, -1)][choice]
    elif kind == "nan_inf":
        target = "kspace" if choice < 5 else "reconstruction_rss"
        arr = data[target].copy()
        flat = arr.reshape(-1)
        idx = rng.integers(0, flat.size, int(rng.integers(1, 50)))
        flat[idx] = [np.nan, np.inf, -np.inf][int(rng.integers(0, 3))]
        data[target] = arr
    elif kind == "missing_key":
        victim = ["kspace", "kspace", "reconstruction_rss", "ismrmrd_header"][choice % 4]
        if choice >= 4 and victim == "kspace":
            data["k-space"] = data.pop("kspace")
        else:
            data.pop(victim, None)
    elif kind == "zeros":
        data["kspace"] = np.zeros_like(k) if choice < 4 else k * np.float32(1e-30)
    elif kind == "reference":
        r = data["reconstruction_rss"]
        data["reconstruction_rss"] = [r[:, :16, :16], r[:1], r[..., None], r.astype(np.complex64), -r, r * 0,
                                      r.astype(np.float16), np.full(r.shape, np.nan, np.float32)][choice]
    elif kind == "mask":
        w = k.shape[-1]
        data["mask"] = [np.zeros(w, bool), np.ones(w, bool), np.ones(w + 3, bool), np.full(w, np.nan, np.float32),
                        np.ones((2, w), bool), rng.random(w) > 0.7, np.array(1.0), np.ones(w, np.int64) * 7][choice]
    elif kind == "header":
        data["ismrmrd_header"] = np.void([b"garbage \xff\xfe", b"<ismrmrdHeader><broken",
                                          b"<ismrmrdHeader><encoding><reconSpace><matrixSize><x>0</x><y>-4</y>"
                                          b"</matrixSize></reconSpace></encoding></ismrmrdHeader>",
                                          b" ", b"\x00" * 64, b"<a>" * 500, b"<x>1e9</x>", b"<?xml?>"][choice])
    elif kind == "attrs":
        attrs.update([{"acquisition": 7}, {"max": np.nan}, {"norm": "high"}, {"acquisition": b"\xff"},
                      {"patient_id": np.arange(3)}, {"max": -1.0}, {"acquisition": ""}, {"norm": np.inf}][choice])
    elif kind == "scale":
        factor = [1e30, 1e-38, 1e20, 1e-20, 3e38, 1e10, -1, 1j][choice]
        data["kspace"] = (k * np.complex64(factor)).astype(k.dtype)
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value)
        for key, value in attrs.items():
            f.attrs[key] = value
    return f"{kind} #{choice}"


def _call(argv: list, capsys) -> tuple[int, list[str]]:
    """``mrimsm ARGV`` in-process; an exception that escapes :func:`mrimsm.cli.main.main` is a
    traceback a user would see, so it fails the test."""
    try:
        rc = main([str(a) for a in argv])
    except Exception as exc:  # noqa: BLE001 - that is the bug this loop looks for
        err = capsys.readouterr().err
        raise AssertionError(f"traceback: {type(exc).__name__}: {exc}\n{err}") from exc
    return rc, capsys.readouterr().err.strip().splitlines()


def _check_recon(rc: int, err: list[str], out: Path) -> None:
    assert rc in (0, 2), (rc, err)
    assert not [p for p in out.parent.rglob("*") if p.name.endswith(".tmp")] if out.parent.exists() else True
    if rc == 2:
        assert len(err) == 1 and err[0].startswith("error: "), err
        assert not out.exists()
        return
    with h5py.File(out, "r") as f:
        rec = f["reconstruction"][()]
    assert rec.ndim == 3 and rec.dtype == np.float32 and np.isfinite(rec).all()


def _check_prep(rc: int, err: list[str], out: Path) -> None:
    assert rc in (0, 2), (rc, err)
    assert all(e.startswith(("error: ", "warning: ")) for e in err), err
    if rc == 2:
        assert err and err[-1].startswith("error: ")
        assert not out.exists()  # nothing, not even an empty directory
        return
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    for shard in manifest["shards"]:
        with h5py.File(out / shard["shard"], "r") as f:
            assert np.isfinite(f["y"][()]).all() and np.isfinite(f["maps"][()]).all()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def _fuzz(cases: range, base: dict, tmp_path: Path, capsys) -> dict:
    outcomes: dict = {}
    for case in cases:
        folder = tmp_path / f"c{case}"
        folder.mkdir()
        src = folder / "raw" / "scan.h5"
        src.parent.mkdir()
        what = _corrupt(case, base, src)
        method = ["-m", "cs", "--cs-iters", "2"] if case % 5 == 0 else ["-m", "zero-filled"]
        out = folder / "recon" / "scan.h5"
        rc, err = _call(["recon", src, "--accel", "4", *method, "-o", out, "-q", "--threads", "1"], capsys)
        try:
            _check_recon(rc, err, out)
        except AssertionError as exc:
            raise AssertionError(f"recon, case {case} ({what}): {exc}") from None
        rc2, err2 = _call(["prep-fastmri", src.parent, folder / "prep", "--size", "32", "--center-lines", "6",
                           "--acquisition", "all", "--skip-last", "0", "--val-fraction", "0", "--espirit-coarse",
                           "1", "--strict", "-q", "--threads", "1"], capsys)
        try:
            _check_prep(rc2, err2, folder / "prep")
        except AssertionError as exc:
            raise AssertionError(f"prep-fastmri, case {case} ({what}): {exc}") from None
        assert src.read_bytes() == src.read_bytes()  # never written (read-only use)
        outcomes[case] = (what, rc, rc2, (err or [""])[-1][:90], (err2 or [""])[-1][:90])
    return outcomes


def test_fuzz_corrupted_inputs(fuzz_base, tmp_path, capsys):
    """60 corrupted files: each ends with exit 0 and a valid output, or exit 2 with one line."""
    outcomes = _fuzz(range(60), fuzz_base, tmp_path, capsys)
    codes = [o[1] for o in outcomes.values()] + [o[2] for o in outcomes.values()]
    assert codes.count(2) >= 40 and codes.count(0) >= 5  # both paths are exercised


@pytest.mark.slow
def test_fuzz_corrupted_inputs_long(fuzz_base, tmp_path, capsys):
    _fuzz(range(60, 600), fuzz_base, tmp_path, capsys)


def test_handlers_keep_an_ignored_signal_ignored_and_restore_the_previous_ones():
    from mrimsm.interrupt import deferred_interrupts, raising_interrupts

    before_int, before_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job started by a script
    try:
        for block in (raising_interrupts, deferred_interrupts):
            with block():
                assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
                assert signal.getsignal(signal.SIGTERM) not in (before_term, signal.SIG_IGN)
            assert signal.getsignal(signal.SIGTERM) == before_term
    finally:
        signal.signal(signal.SIGINT, before_int)
    with deferred_interrupts() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert stop and stop.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before_term


def test_recon_msm_batches_down_or_refuses_by_memory(tmp_path, capsys, monkeypatch):
    import mrimsm.limits as memory
    from mrimsm.models.memory import forward_bytes
    from mrimsm.recon import ReconOptions, reconstruct_file
    from mrimsm.recon.msm import MSMRecon
    from mrimsm.recon.run import fit_batch

    sample = REPO / "data" / "sample" / "sample_brain.h5"
    if not sample.exists():
        from mrimsm.data.simulate import make_sample_file

        sample = make_sample_file(tmp_path / "sample.h5")
    method = MSMRecon({"device": "cpu", "samples": 2})
    one = method.memory_per_slice((64, 64), 8)
    from mrimsm.inference import load_msm

    net = load_msm(ASSETS / "default_msm.pt").denoiser.backbone  # the shipped prior for 64 x 64
    assert one > forward_bytes(net, (64, 64), 2) > forward_bytes(net, (64, 64), 1)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": int(2.5 * one / 0.8))
    assert fit_batch(method, "msm", 8, (4, 8, 64, 64), "cpu") == 2
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": int(0.5 * one))
    rc, err, _ = _run(["recon", sample, "--accel", "4", "-m", "msm", "--samples", "2", "--steps", "2",
                       "-o", tmp_path / "x.h5", "-q", "--device", "cpu"], capsys)
    _one_error(rc, err, "one 64 x 64 slice needs about", "GiB free on cpu", "--samples")
    assert not (tmp_path / "x.h5").exists()
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": int(1.5 * one / 0.8))
    rep = reconstruct_file(sample, tmp_path / "y.h5", ["msm"], accel=4,
                           options={"device": "cpu", "samples": 2, "steps": 2, "batch_slices": 4})
    assert rep.results[0].info["batch_slices_memory_capped"] == 1
