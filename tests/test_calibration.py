"""A prior's calibration (mrimsm.recon.calibration, ``mrimsm calibrate``) and recon's
``error_bound``: written only with a calibration that fits the checkpoint, the solver
settings and the acceleration; refused in one line when asked for and impossible."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from mrimsm.cli.main import main
from mrimsm.data.simulate import make_sample_file
from mrimsm.recon.calibration import calibration_path, choose_bound, load_calibration
from mrimsm.uncertainty import object_support

REPO = Path(__file__).resolve().parents[1]
PRIOR = REPO / "mrimsm" / "assets" / "default_msm.pt"
FAST = "posterior:\n  steps: 2\n  w: 1\n  samples: 2\n  t0: 0.3\n  init: sense\n  batch_slices: 2\n"


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A copy of the shipped 64 prior calibrated at R = 4 on two small scans."""
    d = tmp_path_factory.mktemp("cal")
    ckpt = d / "prior.pt"
    shutil.copy(PRIOR, ckpt)
    (d / "fast.yaml").write_text(FAST)
    scans = [make_sample_file(d / f"cal{i}.h5", num_slices=2, seed=10 + i) for i in range(2)]
    rc = main(["calibrate", *map(str, scans), "--checkpoint", str(ckpt), "-R", "4", "--settings",
               str(d / "fast.yaml"), "-q", "--threads", "1"])
    assert rc == 0
    return d, ckpt


def _one_error(rc, capsys, *parts):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error:"), err
    for p in parts:
        assert p in err[0], err[0]
    return err[0]


def test_calibration_file(calibrated):
    d, ckpt = calibrated
    cal = load_calibration(ckpt)
    assert calibration_path(ckpt) == d / "prior.calibration.json"
    assert cal["settings"]["steps"] == 2 and cal["settings"]["samples"] == 2
    (entry,) = cal["entries"]
    assert entry["accel"] == 4.0 and entry["slices"] == 4 and entry["files"] == ["cal0.h5", "cal1.h5"]
    q = [entry["levels"][f"{lv:.2f}"] for lv in (0.5, 0.8, 0.9, 0.99)]
    assert all(a <= b for a, b in zip(q, q[1:])) and q[0] > 0
    assert choose_bound(ckpt, 4, 4.0, cal["settings"], 0.9).scale == entry["levels"]["0.90"]
    assert choose_bound(ckpt, 4, 4.0, cal["settings"], 0.905).level == 0.91  # the next level up


def test_recon_writes_the_bound_and_the_record(calibrated, tmp_path, capsys):
    d, ckpt = calibrated
    scan = make_sample_file(tmp_path / "test.h5", num_slices=2, seed=3)
    out = tmp_path / "out.h5"
    rc = main(["recon", str(scan), "-R", "4", "--checkpoint", str(ckpt), "--settings", str(d / "fast.yaml"),
               "-o", str(out), "-q", "--threads", "1", "--png", str(tmp_path / "png")])
    assert rc == 0, capsys.readouterr().err
    with h5py.File(out) as f:
        bound, std = f["error_bound"][()], f["uncertainty"][()]
        info = json.loads(f.attrs["error_bound_calibration"])
        rec = f["reconstruction"][()]
    with h5py.File(scan) as f:
        ref = f["reconstruction_rss"][()]
    assert info["level"] == 0.9 and info["calibration"] == "prior.calibration.json"
    assert bound.shape == std.shape and (bound >= info["scale"] * std - 1e-6).all()
    inside = object_support(ref)
    covered = float(np.mean((np.abs(rec - ref) <= bound)[inside]))
    assert covered > 0.5  # 4 calibration slices: a loose check that the bound is of the error's size
    assert len(list((tmp_path / "png").glob("*.png"))) == 2


def test_no_bound_for_other_settings_or_acceleration(calibrated, tmp_path, capsys):
    d, ckpt = calibrated
    scan = make_sample_file(tmp_path / "test.h5", num_slices=1, seed=4)
    rc = main(["recon", str(scan), "-R", "4", "--checkpoint", str(ckpt), "--settings", str(d / "fast.yaml"),
               "--steps", "3", "-o", str(tmp_path / "a.h5"), "-q", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 0 and "no error_bound written" in err and "steps 2 -> 3" in err
    with h5py.File(tmp_path / "a.h5") as f:
        assert "error_bound" not in f and "uncertainty" in f
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["recon", str(scan), "-R", "6", "--checkpoint", str(ckpt), "--settings", str(d / "fast.yaml"),
               "--coverage", "0.9", "-o", str(tmp_path / "b.h5"), "-q", "--threads", "1"])
    _one_error(rc, capsys, "--coverage 0.9", "no entry for R = 6", "calibrated: R = 4")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_coverage_refused_without_calibration(tmp_path, capsys):
    ckpt = tmp_path / "bare.pt"
    shutil.copy(PRIOR, ckpt)
    scan = make_sample_file(tmp_path / "test.h5", num_slices=1, seed=5)
    rc = main(["recon", str(scan), "-R", "4", "--checkpoint", str(ckpt), "--coverage", "0.9", "--samples", "2",
               "-o", str(tmp_path / "o.h5"), "-q"])
    _one_error(rc, capsys, "bare.pt has no calibration", "mrimsm calibrate")
    assert not (tmp_path / "o.h5").exists()


def test_stale_or_broken_calibration(calibrated, tmp_path, capsys):
    d, ckpt = calibrated
    other = tmp_path / "prior.pt"
    shutil.copy(ckpt, other)
    with open(other, "ab") as f:  # another checkpoint beside a copied calibration
        f.write(b"\0")
    shutil.copy(calibration_path(ckpt), calibration_path(other))
    assert "another checkpoint" in choose_bound(other, 4, 4.0, {}, 0.9).reason
    calibration_path(other).write_text("[1, 2]")
    scan = make_sample_file(tmp_path / "test.h5", num_slices=1, seed=6)
    rc = main(["recon", str(scan), "-R", "4", "--checkpoint", str(other), "--coverage", "0.9",
               "-o", str(tmp_path / "o.h5"), "-q"])
    _one_error(rc, capsys, "prior.calibration.json: not a usable calibration")


def test_calibrate_refuses_bad_input(tmp_path, capsys):
    own = tmp_path / "own.h5"
    make_sample_file(own, num_slices=1)
    rc = main(["calibrate", str(own), "-R", "4", "-q"])
    _one_error(rc, capsys, "give --checkpoint (or -o)")
    rc = main(["calibrate", str(tmp_path / "missing.h5"), "--checkpoint", str(PRIOR), "-o", str(tmp_path / "c.json")])
    _one_error(rc, capsys, "no such file or directory")
    rc = main(["calibrate", str(own), "--checkpoint", str(PRIOR), "-o", str(own)])
    _one_error(rc, capsys, "exists")
    assert not (tmp_path / "c.json").exists()


def test_calibrate_add_keeps_the_other_accelerations(calibrated, tmp_path, capsys):
    """``--add`` puts a new acceleration beside the file's others; for other solver settings
    or another checkpoint it refuses and leaves the file as it was (the new work aside)."""
    d, source = calibrated
    ckpt = tmp_path / "prior.pt"
    shutil.copy(source, ckpt)
    shutil.copy(calibration_path(source), calibration_path(ckpt))
    before = calibration_path(ckpt).read_text()
    r4 = load_calibration(ckpt)["entries"][0]
    scans = [make_sample_file(tmp_path / "cal.h5", num_slices=2, seed=12)]
    base = ["calibrate", *map(str, scans), "--checkpoint", str(ckpt), "--settings", str(d / "fast.yaml"), "-q",
            "--threads", "1"]
    _one_error(main(base + ["-R", "6"]), capsys, "exists", "--add")
    _one_error(main(base + ["-R", "6", "--add", "--overwrite"]), capsys, "give one of them")
    assert main(base + ["-R", "6", "--add"]) == 0, capsys.readouterr().err
    cal = load_calibration(ckpt)
    assert [e["accel"] for e in cal["entries"]] == [4.0, 6.0] and cal["entries"][0] == r4
    assert cal["entries"][1]["files"] == ["cal.h5"]
    assert choose_bound(ckpt, 6, 6.0, cal["settings"], 0.9).scale == cal["entries"][1]["levels"]["0.90"]
    merged = calibration_path(ckpt).read_text()
    _one_error(main(base + ["-R", "8", "--add", "--samples", "3"]), capsys, "cannot add to", "samples 2 -> 3",
               "prior.calibration.new.json")
    assert calibration_path(ckpt).read_text() == merged != before
    assert [e["accel"] for e in json.loads((tmp_path / "prior.calibration.new.json").read_text())["entries"]] == [8.0]
    with open(ckpt, "ab") as f:  # now another checkpoint: refused before any work
        f.write(b"\0")
    _one_error(main(base + ["-R", "8", "--add"]), capsys, "cannot add to", "another checkpoint")
    assert calibration_path(ckpt).read_text() == merged


def test_merge_calibration_replaces_the_entries_it_recalibrates():
    from mrimsm.errors import MrimsmError
    from mrimsm.recon.calibration import merge_calibration

    def cal(*accels, sha="a", samples=4, seed=0):
        return {"checkpoint": {"sha256": sha}, "settings": {"samples": samples}, "seed": seed,
                "entries": [{"accel": a, "tag": (sha, samples, seed, a)} for a in accels]}

    old, new = cal(6.0, 4.0), cal(8.0, 6.0, seed=0)
    new["entries"][1]["tag"] = "new 6"
    merged = merge_calibration(old, new)
    assert [(e["accel"], e["tag"]) for e in merged["entries"]] == [(4.0, ("a", 4, 0, 4.0)), (6.0, "new 6"),
                                                                  (8.0, ("a", 4, 0, 8.0))]
    assert old["entries"][0]["accel"] == 6.0 and len(new["entries"]) == 2  # inputs untouched
    for other, what in ((cal(8.0, sha="b"), "another checkpoint"), (cal(8.0, samples=8), "samples 4 -> 8"),
                        (cal(8.0, seed=1), "seed differs")):
        with pytest.raises(MrimsmError, match=what):
            merge_calibration(old, other)


def test_a_calibration_from_before_the_bootstrap_key_holds_for_bootstrap_zero_only():
    from mrimsm.recon.calibration import settings_differ

    old = {"settings": {"steps": 50, "samples": 4, "t0": 0.3}}  # written before `bootstrap` existed
    assert settings_differ(old, {"steps": 50, "samples": 4, "t0": 0.3, "bootstrap": 0.0}) == []
    assert settings_differ(old, {"steps": 50, "samples": 4, "t0": 0.3, "bootstrap": 0.3}) == ["bootstrap 0.0 -> 0.3"]
    new = {"settings": {"steps": 50, "bootstrap": 0.3}}
    assert settings_differ(new, {"steps": 50, "bootstrap": 0.3}) == []
