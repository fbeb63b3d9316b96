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
from test_faults import _one_error, _run
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


# -- F22: repeated signals: exit 130 after the resume line, every time ----------------------------


def _storm(proc: subprocess.Popen, count: int = 100, gap: float = 0.02) -> int:
    """Send SIGTERM ``count`` times, ``gap`` s apart, while ``proc`` lives; how many were sent."""
    sent = 0
    for _ in range(count):
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGTERM)
        sent += 1
        time.sleep(gap)
    return sent


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_train_resume_under_repeated_sigterm_exits_130(tmp_path, capsys):
    cfg = _toy_yaml(tmp_path, max_steps=1_000_000, ckpt_every=0, log_every=20)
    run = tmp_path / "run"
    assert _run(["train", cfg, "--out", run, "--max-steps", "3", "-q"], capsys)[0] == 0
    log = run / "log.jsonl"
    size = log.stat().st_size
    proc = subprocess.Popen([PYTHON, "-c", DRIVER, "train", str(cfg), "--out", str(run), "--resume", "-q",
                             "--threads", "1"], env=_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: log.stat().st_size > size, proc)
    sent = _storm(proc)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, sent, err[-2000:])
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert lines[-1].startswith("interrupted: SIGTERM at step ") and "--resume" in lines[-1], lines
    assert all(not ln.startswith(("error", "interrupted")) for ln in lines[:-1]), lines
    from mrimsm.checkpoint import load_checkpoint

    assert load_checkpoint(run / "last.pt")["step"] == int(lines[-1].split(" at step ")[1].split()[0])


def test_recon_dir_under_repeated_sigterm_exits_130(tmp_path):
    src = tmp_path / "in"
    for i in range(3):
        write_fake_fastmri(src / f"s{i}.h5", "full", num_slices=2, size=32, num_coils=4, seed=i)
    out = tmp_path / "out"
    proc = subprocess.Popen([PYTHON, "-m", "mrimsm", "recon", str(src), "-o", str(out), "-m", "cs", "--cs-iters",
                             "150", "--accel", "4", "-q", "--threads", "1"], env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: out.is_dir() and any(out.glob("*.h5")), proc)
    sent = _storm(proc)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, sent, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: ") and "files finished" in lines[0], lines
    assert not list(out.glob(".*.lock")) and not list(out.glob("*.tmp"))


def test_sample_sigterm_stops_cleanly(tmp_path):
    proc = subprocess.Popen([PYTHON, "-m", "mrimsm", "sample", str(ASSETS / "default_msm.pt"), "-o",
                             str(tmp_path / "s.h5"), "-n", "16", "--batch-size", "1", "--steps", "200", "--device",
                             "cpu", "--threads", "1"], env=_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=0)
    # the progress bar's first line says sampling has begun; 16 samples, not 4, so that on a
    # loaded machine the signals land before the last one is done (with 4, a clean-clone run
    # beside two other jobs once saw all of them finish first)
    seen = ""
    while "sample:" not in seen:
        char = proc.stderr.read(1)
        assert char, (proc.wait(), seen)
        seen += char
    sent = _storm(proc, count=20)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, sent, err[-2000:])
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "Traceback" not in err
    assert last.startswith("interrupted: SIGTERM after ") and "of 16 samples; nothing written" in last, last
    assert sorted(os.listdir(tmp_path)) == []


def test_until_exit_raises_once_then_ignores():
    from mrimsm.interrupt import raising_interrupts, stopping, until_exit

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with until_exit():
            with pytest.raises(KeyboardInterrupt):
                with raising_interrupts():
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(1)
            assert stopping() == "SIGTERM"
            for _ in range(5):  # after the block: ignored, no KeyboardInterrupt, no death
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
        # the process is stopping: the signals stay ignored on the way out
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    with until_exit():  # no signal: the previous handlers come back
        pass
    assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]
    assert stopping() == ""


# -- F23: Typer / Click usage errors are one line, exit 2 ------------------------------------------

#: per command: a bad value of a typed option (or a flag given a value), with what the
#: message names; every command of the app must be here
BAD_VALUES = {
    "recon": (["x.h5", "--quiet=yes"], "--quiet"),
    "train": (["c.yaml", "--threads", "two"], "--threads"),
    "prep-fastmri": (["raw", "out", "--accel", "six"], "--accel"),
    "sample": (["c.pt", "-n", "abc"], "--num"),
    "restore": (["i.png", "-o", "o.png", "--task", "sr4", "--samples", "abc"], "--samples"),
    "calibrate": (["s.h5", "--quiet=yes"], "--quiet"),
    "convert": (["meas.dat", "--overwrite=yes"], "--overwrite"),
}


def test_every_command_is_covered():
    import typer

    from mrimsm.cli.main import app

    assert set(typer.main.get_command(app).commands) == set(BAD_VALUES)


@pytest.mark.parametrize("command", sorted(BAD_VALUES))
def test_usage_errors_are_one_line(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, flag = BAD_VALUES[command]
    cases = [
        ([command, *args], flag),  # a bad value
        ([command, *args[:1], "--no-such-option"], "--no-such-option"),  # an unknown option
        ([command], "Missing argument"),  # a missing argument
    ]
    for argv, needle in cases:
        rc, err, out = _run(argv, capsys)
        line = _one_error(rc, err, needle)
        assert "╭" not in line and "Usage:" not in line and out == "", (argv, line, out)
        assert f"mrimsm {command} --help" in line
    assert os.listdir(tmp_path) == []


#: the commands whose every option and argument is swept with bad values (:func:`_option_cases`)
SWEPT = ("train", "sample", "recon", "restore", "calibrate", "convert")


def _option_cases(inputs: Path, work: Path) -> dict[str, tuple[list, dict[str, list]]]:
    """``command -> (base args, {param: [(args, needle), ...]})`` with real inputs under
    ``inputs`` and every output under ``work``."""
    from PIL import Image

    inputs.mkdir()
    cfg = _toy_yaml(inputs)
    png = inputs / "grey.png"
    Image.fromarray(np.full((32, 32), 128, np.uint8), mode="L").save(png)
    scan = write_fake_fastmri(inputs / "scan.h5", "full", num_slices=1, size=32, num_coils=4)
    twix = inputs / "meas.dat"
    twix.write_bytes(b"not a twix file")
    taken = inputs / "taken.h5"  # an existing output
    taken.write_bytes(b"x")
    missing = inputs / "missing"
    msm = ASSETS / "default_msm.pt"
    flag = lambda name: [([f"{name}=yes"], name)]  # noqa: E731
    recon_with = lambda *args: [scan, "-R", "4", "-o", work / "o.h5", "--device", "cpu", "-q", *args]  # noqa: E731
    ints = lambda name, low, below: [([name, "abc"], name), ([name, str(below)], f"{name} must be {low}")]  # noqa: E731
    return {
        "train": (["train", cfg, "--out", work / "run"], {
            "config": [([missing / "c.yaml", "--out", work / "run"], "does not exist")],
            "out": [(["--out", taken], str(taken))],
            "resume": flag("--resume"),
            "allow_data_change": flag("--allow-data-change"),
            "max_steps": ints("--max-steps", ">= 0", -1),
            "method": [(["--method", "nope"], "unknown method 'nope'")],
            "data": [([REPO / "configs" / "tiny.yaml", "--out", work / "run", "--data", missing], str(missing))],
            "device": [(["--device", "tpu"], "--device must be cpu, cuda or cuda:N")],
            "threads": ints("--threads", "an integer in [1, ", 0),
            "quiet": flag("--quiet"),
        }),
        "sample": (["sample", msm, "-o", work / "s.h5", "--device", "cpu"], {
            "checkpoint": [([missing / "c.pt", "-o", work / "s.h5"], "missing")],
            "num": ints("-n", ">= 1", 0),
            "steps": ints("--steps", ">= 1", 0) + [(["--steps", "5000"], "--steps must be <= 1000")],
            "w": ints("--w", ">= 1", 0),
            "eta": [(["--eta", "2"], "--eta must be in [0, 1]"), (["--eta", "nan"], "--eta must be a finite number"),
                    (["--eta", "x"], "--eta")],
            "seed": ints("--seed", "an integer in [0, 4294967295]", -1),
            "out": [(["-o", taken / "s.h5"], str(taken))],
            "batch_size": ints("--batch-size", ">= 1", 0),
            "device": [(["--device", "tpu"], "--device must be cpu, cuda or cuda:N")],
            "threads": ints("--threads", "an integer in [1, ", 0),
            "quiet": flag("--quiet"),
        }),
        "recon": (["recon", *recon_with("-m", "zero-filled")], {
            "input": [([missing / "s.h5", "-R", "4", "-o", work / "o.h5"], "missing")],
            "accel": [(["-R", "six"], "--accel"), (["-R", "0.5"], "--accel must be a number >= 1"),
                      (["-R", "nan"], "--accel must be a number >= 1")],
            "output": [(["-o", taken], "taken.h5")],
            "method": [(["-m", "nope"], "unknown method 'nope'")],
            "png": [(["--png", taken], "taken.h5")],
            "seed": ints("--seed", "an integer in [0, 4294967295]", -1),
            "center_fraction": [(["--center-fraction", "0"], "--center-fraction must be in (0, 1]"),
                                (["--center-fraction", "x"], "--center-fraction")],
            "cs_lambda": [(["--cs-lambda", "-1"], "--cs-lambda must be >= 0"),
                          (["--cs-lambda", "nan"], "--cs-lambda must be a finite number")],
            "cs_iters": ints("--cs-iters", "an integer in [1, 100000]", 0),
            "checkpoint": [(recon_with("-m", "msm", "--checkpoint", missing / "c.pt"), "missing")],
            "ssdu_checkpoint": [(recon_with("-m", "ssdu", "--ssdu-checkpoint", missing / "s.pt"), "missing")],
            "settings": [(recon_with("-m", "msm", "--settings", missing / "s.yaml"), "s.yaml")],
            "steps": ints("--steps", ">= 1", 0),
            "w": ints("--w", "an integer in [1, 1000]", 0),
            "eta": [(["--eta", "2"], "--eta must be in [0, 1]"), (["--eta", "nan"], "--eta must be a finite number"),
                    (["--eta", "x"], "--eta")],
            "dc_step": [(["--dc-step", "3"], "--dc-step must be in [0, 2]"), (["--dc-step", "inf"], "--dc-step")],
            "dc": [(["--dc", "gradient"], "'gradient' is not one of 'operator', 'measurement', 'tweedie'")],
            "dc_lambda": [(["--dc-lambda", "-1"], "--dc-lambda must be >= 0"), (["--dc-lambda", "x"], "--dc-lambda")],
            "dc_schedule": [(["--dc-schedule", "cosine"], "'cosine' is not one of 'fixed', 'sigma', 'noise'")],
            "dc_iters": ints("--dc-iters", "an integer in [1, 100000]", 0),
            "dc_noise": [(["--dc-noise", "-0.1"], "--dc-noise must be >= 0"), (["--dc-noise", "nan"], "--dc-noise")],
            "t0": [(["--t0", "2"], "--t0 must be in [0, 1]"), (["--t0", "x"], "--t0"),
                   (recon_with("-m", "msm", "--t0", "0.5", "--init", "none"), "needs an initial image")],
            "init": [(["--init", "baseline"], "'baseline' is not one of 'none', 'sense', 'cs', 'zero-filled'")],
            "sense_lambda": [(["--sense-lambda", "-1"], "--sense-lambda must be >= 0"),
                             (["--sense-lambda", "inf"], "--sense-lambda must be a finite number")],
            "sense_iters": ints("--sense-iters", "an integer in [1, 100000]", 0),
            "samples": ints("--samples", ">= 1", 0),
            "bootstrap": [(["--bootstrap", "1"], "--bootstrap must be in [0, 0.9]"), (["--bootstrap", "x"], "--bootstrap")],
            "coverage": [(["--coverage", "0.3"], "--coverage must be in [0.5, 0.99]"), (["--coverage", "x"], "--coverage")],
            "coils": ints("--coils", "an integer >= 1", 0),
            "batch_slices": ints("--batch-slices", ">= 1", 0),
            "device": [(["--device", "tpu"], "--device must be cpu, cuda or cuda:N")],
            "threads": ints("--threads", "an integer in [1, ", 0),
            "overwrite": flag("--overwrite"),
            "quiet": flag("--quiet"),
        }),
        "restore": (["restore", png, "-o", work / "r.png", "-t", "inpaint-box", "--device", "cpu"], {
            "input": [([missing / "i.png", "-o", work / "r.png", "-t", "sr4"], "missing")],
            "output": [(["-o", work / "r.txt"], "r.txt")],
            "task": [(["-t", "denoise"], "'denoise' is not one of 'inpaint-box', 'sr4'")],
            "checkpoint": [(["--checkpoint", missing / "c.pt"], "missing")],
            "simulate": flag("--simulate"),
            "samples": [(["--samples", "abc"], "--samples"), (["--samples", "0"], "samples must be >= 1")],
            "steps": [(["--steps", "abc"], "--steps"), (["--steps", "0"], "steps must be >= 1")],
            "w": [(["--w", "abc"], "--w"), (["--w", "1000000"], "w must be an integer in [1, 1000]")],
            "eta": [(["--eta", "2"], "eta must be in [0, 1]"), (["--eta", "nan"], "--eta must be a finite number")],
            "t0": [(["--t0", "2"], "t0 must be in [0, 1]"), (["--t0", "inf"], "--t0 must be a finite number")],
            "init": [(["--init", "cs"], "'cs' is not one of 'none', 'baseline'")],
            "noise": [(["--simulate", "--noise", "nan"], "--noise must be a finite number"),
                      (["--noise", "x"], "--noise")],
            "seed": ints("--seed", "an integer in [0, 4294967295]", 2**32),
            "device": [(["--device", "tpu"], "--device must be cpu, cuda or cuda:N")],
            "threads": ints("--threads", "an integer in [1, ", 0),
            "quiet": flag("--quiet"),
        }),
        "calibrate": (["calibrate", scan, "--checkpoint", msm, "-o", work / "c.json", "--device", "cpu"], {
            "scans": [([missing / "s.h5", "--checkpoint", msm, "-o", work / "c.json"], "no such file")],
            "checkpoint": [(["--checkpoint", missing / "c.pt"], "missing")],
            "accel": [(["-R", "six"], "--accel"), (["-R", "0.5"], "--accel must be a number >= 1"),
                      (["-R", "nan"], "--accel must be a number >= 1")],
            "samples": [(["--samples", "abc"], "--samples"), (["--samples", "0"], "samples must be >= 1")],
            "bootstrap": [(["--bootstrap", "-0.1"], "--bootstrap must be in [0, 0.9]"), (["--bootstrap", "x"], "--bootstrap")],
            "settings": [(["--settings", missing / "s.yaml"], "s.yaml")],
            "seed": ints("--seed", "an integer in [0, 4294967295]", -1),
            "output": [(["-o", taken], "exists; pass --overwrite")],
            "device": [(["--device", "tpu"], "--device must be cpu, cuda or cuda:N")],
            "threads": ints("--threads", "an integer in [1, ", 0),
            "overwrite": flag("--overwrite"),
            "add": flag("--add") + [(["-o", taken, "--add"], "cannot read the calibration"),
                                    (["--add", "--overwrite"], "give one of them")],
            "quiet": flag("--quiet"),
        }),
        "convert": (["convert", twix, "-o", work / "c.h5"], {
            "input": [([missing / "meas.dat", "-o", work / "c.h5"], "meas.dat")],
            "output": [(["-o", taken], "exists; pass --overwrite")],
            "overwrite": flag("--overwrite"),
        }),
    }


def test_every_option_is_swept(tmp_path):
    import typer

    from mrimsm.cli.main import app

    commands = typer.main.get_command(app).commands
    cases = _option_cases(tmp_path / "in", tmp_path / "work")
    for command in SWEPT:
        params = {p.name for p in commands[command].params if p.name != "help"}
        assert set(cases[command][1]) == params, command


@pytest.mark.parametrize("command", SWEPT)
def test_every_bad_option_value_is_one_line(command, tmp_path, capsys, monkeypatch):
    """Each bad value: one ``error:`` line naming the option (or the file), exit 2, no
    output on stdout and nothing written anywhere."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    base, params = _option_cases(tmp_path / "in", work)[command]
    before = _files(tmp_path)
    for param, cases in params.items():
        for args, needle in cases:
            # an argument's case (it starts with a path) replaces the base arguments
            argv = [command, *args] if not str(args[0]).startswith("-") else [*base, *args]
            rc, err, out = _run(argv, capsys)
            assert rc == 2 and len(err) == 1, (argv, rc, err[-3:])
            line = _one_error(rc, err, needle)
            assert "╭" not in line and out == "", (argv, line, out)
            assert _files(tmp_path) == before, (argv, _files(tmp_path) - before)


def test_root_usage_errors_and_help(capsys):
    for argv, needle in ((["bogus"], "No such command 'bogus'"), (["--bogus"], "--bogus")):
        _one_error(*_run(argv, capsys)[:2], needle)
    rc, err, out = _run(["--help"], capsys)
    assert rc == 0 and err == [] and "Usage" in out and "recon" in out
    rc, err, out = _run(["recon", "--help"], capsys)
    assert rc == 0 and err == [] and "--accel" in out
    rc, err, out = _run(["--version"], capsys)
    assert rc == 0 and out.startswith("mrimsm ")


def test_usage_error_in_a_real_process():
    proc = subprocess.run([PYTHON, "-m", "mrimsm", "prep-fastmri", "raw", "out", "--accel", "six"], env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: Invalid value for '--accel'"), proc.stderr


def test_keyboard_interrupt_in_a_command_is_130(tmp_path, capsys, monkeypatch):
    import mrimsm.config

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mrimsm.config, "load_config", interrupted)
    rc, err, _ = _run(["train", _toy_yaml(tmp_path), "--out", tmp_path / "run"], capsys)
    assert rc == 130 and err == ["interrupted"], (rc, err)


# -- corrupt checkpoints: the CRCs of torch's zip records are checked on load ---------------------


def _flip_middle(path: Path) -> None:
    """Flip 8 bytes in the middle of the largest record's data (a tensor), as a bad disk would."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = np.frombuffer(bytes(raw[info.header_offset + 26: info.header_offset + 30]), "<u2")
    start = info.header_offset + 30 + int(name_len) + int(extra_len) + info.file_size // 2
    for i in range(start, start + 8):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_corrupt_last_pt_points_at_the_kept_checkpoint(tmp_path, capsys):
    cfg = _toy_yaml(tmp_path, max_steps=6, ckpt_every=2, keep_every=2)
    run = tmp_path / "run"
    assert _run(["train", cfg, "--out", run, "--max-steps", "4", "-q"], capsys)[0] == 0
    kept = run / "checkpoints" / "step_0000004.pt"
    assert kept.is_file()
    _flip_middle(run / "last.pt")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    rc, err, _ = _run(["train", cfg, "--out", run, "--resume", "-q"], capsys)
    _one_error(rc, err, f"{run / 'last.pt'} is corrupt", "does not match", f"cp {kept} {run / 'last.pt'}")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing written
    # the kept one corrupt too: the next older one; none left: say so
    _flip_middle(kept)
    rc, err, _ = _run(["train", cfg, "--out", run, "--resume", "-q"], capsys)
    _one_error(rc, err, "is corrupt", str(run / "checkpoints" / "step_0000002.pt"))
    _flip_middle(run / "checkpoints" / "step_0000002.pt")
    rc, err, _ = _run(["train", cfg, "--out", run, "--resume", "-q"], capsys)
    _one_error(rc, err, "is corrupt", "kept no other checkpoint")


def test_corrupt_checkpoint_for_sample_and_recon(tmp_path, capsys):
    import shutil

    bad = tmp_path / "prior.pt"
    shutil.copy(ASSETS / "default_msm.pt", bad)
    raw = bytearray(bad.read_bytes())  # the middle of the file, literally
    for i in range(len(raw) // 2, len(raw) // 2 + 16):
        raw[i] ^= 0xFF
    bad.write_bytes(bytes(raw))
    rc, err, _ = _run(["sample", bad, "-o", tmp_path / "s.h5", "-n", "1", "--steps", "2", "--device", "cpu", "-q"],
                      capsys)
    _one_error(rc, err, f"{bad} is corrupt", "use another copy")
    scan = write_fake_fastmri(tmp_path / "scan.h5", "full", num_slices=1, size=32, num_coils=4)
    rc, err, _ = _run(["recon", scan, "--accel", "4", "-m", "msm", "--checkpoint", bad, "-o", tmp_path / "r.h5",
                       "--device", "cpu", "-q"], capsys)
    _one_error(rc, err, f"{bad} is corrupt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior.pt", "scan.h5"]


# -- recon DIR: .h5 / .hdf5 in any case; other files are counted -----------------------------------


def test_recon_dir_takes_every_hdf5_suffix_and_counts_the_rest(tmp_path, capsys):
    src = tmp_path / "in"
    for i, name in enumerate(["a.H5", "b.hdf5", "c.HDF5", "d.h5"]):
        write_fake_fastmri(src / name, "full", num_slices=1, size=32, num_coils=4, seed=i)
    (src / "notes.txt").write_text("x")
    (src / "t1.nii").write_bytes(b"x")
    (src / ".hidden").write_text("x")
    (src / "sub").mkdir()
    out = tmp_path / "out"
    rc, err, stdout = _run(["recon", src, "--accel", "4", "-m", "zero-filled", "-o", out, "-q"], capsys)
    assert rc == 0, err
    assert "4 of 4 files" in stdout and "4 done" in stdout
    assert "2 other files skipped (not .h5 / .hdf5: notes.txt, t1.nii)" in stdout, stdout
    assert sorted(os.listdir(out)) == ["a.H5", "b.hdf5", "c.HDF5", "d.h5"]
    only_others = tmp_path / "others"
    only_others.mkdir()
    (only_others / "scan.nii").write_bytes(b"x")
    rc, err, _ = _run(["recon", only_others, "-o", tmp_path / "o2", "--accel", "4", "-m", "zero-filled", "-q"],
                      capsys)
    _one_error(rc, err, "no .h5 files", "1 other file skipped (not .h5 / .hdf5: scan.nii)")
    assert not (tmp_path / "o2").exists()


def test_prep_finds_upper_case_suffixes(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_fake_fastmri(raw / "v0.H5", "full", num_slices=1, size=32, num_coils=4, seed=0)
    write_fake_fastmri(raw / "v1.Hdf5", "full", num_slices=1, size=32, num_coils=4, seed=1)
    (raw / "readme.txt").write_text("x")
    rc, err, stdout = _run(["prep-fastmri", raw, tmp_path / "prep", "--size", "32", "--center-lines", "6",
                            "--acquisition", "all", "--skip-last", "0", "--val-fraction", "0", "--espirit-coarse",
                            "1", "-q", "--threads", "1"], capsys)
    assert rc == 0, err
    assert "from 2 files" in stdout, stdout


# -- recon DIR: one output directory, several runs: a lock per file -------------------------------


def _scans(folder: Path, n: int) -> Path:
    for i in range(n):
        write_fake_fastmri(folder / f"s{i}.h5", "full", num_slices=1, size=32, num_coils=4, seed=i)
    return folder


def test_a_file_another_run_holds_is_skipped_and_said(tmp_path, capsys):
    from mrimsm.recon.directory import OutputLock

    src, out = _scans(tmp_path / "in", 3), tmp_path / "out"
    other = OutputLock(out, src / "s1.h5")  # as another run would: its own open file, its own flock
    assert other.acquire() is None
    try:
        assert OutputLock(out, src / "s1.h5").acquire() == f"pid {os.getpid()}"
        rc, err, stdout = _run(["recon", src, "--accel", "4", "-m", "zero-filled", "-o", out], capsys)
        assert rc == 0, err
        assert "2 done, 0 skipped (already done), 1 skipped (another run is doing them), 0 failed" in stdout, stdout
        assert f"skipped s1.h5: another run is reconstructing it (pid {os.getpid()} holds .s1.h5.lock)" in stdout
        assert sorted(os.listdir(out)) == [".s1.h5.lock", "s0.h5", "s2.h5"]  # only the other run's lock
    finally:
        other.release()
    assert sorted(os.listdir(out)) == ["s0.h5", "s2.h5"]
    rc, err, stdout = _run(["recon", src, "--accel", "4", "-m", "zero-filled", "-o", out, "-q"], capsys)
    assert rc == 0 and "1 done, 2 skipped (already done), 0 failed" in stdout, stdout
    assert sorted(os.listdir(out)) == ["s0.h5", "s1.h5", "s2.h5"]


def test_a_stale_lock_of_a_dead_run_is_taken_over(tmp_path, capsys):
    src, out = _scans(tmp_path / "in", 2), tmp_path / "out"
    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()
    out.mkdir()
    (out / ".s0.h5.lock").write_text(f"{dead.pid}\n")  # a run killed with SIGKILL leaves this behind
    rc, err, stdout = _run(["recon", src, "--accel", "4", "-m", "zero-filled", "-o", out, "-q"], capsys)
    assert rc == 0 and "2 done" in stdout, (err, stdout)
    assert sorted(os.listdir(out)) == ["s0.h5", "s1.h5"]


def test_no_lock_is_left_after_a_failed_file(tmp_path, capsys):
    src, out = _scans(tmp_path / "in", 1), tmp_path / "out"
    write_fake_fastmri(src / "bad.h5", "truncated", num_slices=1, size=32, num_coils=4)
    rc, err, stdout = _run(["recon", src, "--accel", "4", "-m", "zero-filled", "-o", out, "-q"], capsys)
    assert rc == 1 and "1 done" in stdout and "1 failed" in stdout, stdout
    assert sorted(os.listdir(out)) == ["s0.h5"]


@pytest.mark.slow  # two real runs at once: 12-20 s on a busy 2-core machine
def test_two_concurrent_runs_do_each_file_once(tmp_path):
    src, out = _scans(tmp_path / "in", 4), tmp_path / "out"
    cmd = [PYTHON, "-m", "mrimsm", "recon", str(src), "-o", str(out), "-m", "cs", "--cs-iters", "40", "--accel",
           "4", "--threads", "1", "-q"]
    runs = [subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outs = [r.communicate(timeout=120) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], [o[1][-1000:] for o in outs]
    done = [line.split()[1].rstrip(":") for o, _ in outs for line in o.splitlines() if line.startswith("done ")]
    assert sorted(done) == [f"s{i}.h5" for i in range(4)], outs  # each file reconstructed by one run only
    assert sorted(os.listdir(out)) == [f"s{i}.h5" for i in range(4)]
