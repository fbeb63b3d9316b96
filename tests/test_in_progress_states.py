"""``data_scripts/ship_default_models.py --in-progress RUN_DIR``: an unshipped run's compact
resumable state under ``training/in_progress/``, which ``mrimsm train --resume`` continues."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

from mrimsm.checkpoint import load_checkpoint
from mrimsm.cli.main import main
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _ship_script():
    return load_script("data_scripts/ship_default_models.py", "ship_default_models")


def _config(tmp_path) -> Path:
    d = yaml.safe_load((REPO / "configs" / "ssdu_tiny.yaml").read_text())
    d["train"].update(batch_size=2, ckpt_every=1, sample_every=0)
    path = tmp_path / "ssdu.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_an_in_progress_state_is_kept_and_resumes(prepared_measurements, tmp_path, monkeypatch, capsys):
    ship = _ship_script()
    kept_dir = tmp_path / "training" / "in_progress"
    monkeypatch.setattr(ship, "IN_PROGRESS", kept_dir)
    monkeypatch.setattr(ship, "ASSETS", tmp_path / "assets")  # nothing may be shipped
    cfg, run = _config(tmp_path), tmp_path / "runs" / "ssdu_brains"
    common = ["train", cfg, "--method", "ssdu", "--data", prepared_measurements, "--out", run, "-q"]
    assert main([str(a) for a in common + ["--max-steps", "2"]]) == 0

    monkeypatch.setattr(sys, "argv", ["ship_default_models.py", "--in-progress", str(run)])
    ship.main()
    kept = kept_dir / "ssdu_brains_last.pt"
    assert f"kept {kept}" in capsys.readouterr().out
    assert not (tmp_path / "assets").exists()
    state = load_checkpoint(kept)
    assert state["step"] == 2 and state["compact"]["weights"] == "bfloat16"
    assert kept.stat().st_size <= ship.MAX_STATE_BYTES

    # a fresh run directory continues from it (what the next session does)
    again = tmp_path / "elsewhere" / "ssdu_brains"
    again.mkdir(parents=True)
    shutil.copy(kept, again / "last.pt")
    resume = ["train", cfg, "--method", "ssdu", "--data", prepared_measurements, "--out", again, "--resume", "-q"]
    assert main([str(a) for a in resume + ["--max-steps", "3"]]) == 0
    assert load_checkpoint(again / "last.pt")["step"] == 3


def test_a_run_without_a_state_is_refused(tmp_path, monkeypatch):
    ship = _ship_script()
    monkeypatch.setattr(ship, "IN_PROGRESS", tmp_path / "kept")
    monkeypatch.setattr(sys, "argv", ["ship_default_models.py", "--in-progress", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="no last.pt in"):
        ship.main()
    assert not (tmp_path / "kept").exists()


def test_a_refused_state_leaves_the_kept_one_as_it_was(prepared_measurements, tmp_path, monkeypatch):
    ship = _ship_script()
    run = tmp_path / "runs" / "ssdu_brains"
    args = ["train", _config(tmp_path), "--method", "ssdu", "--data", prepared_measurements, "--out", run, "-q"]
    assert main([str(a) for a in args + ["--max-steps", "1"]]) == 0
    kept = tmp_path / "kept" / "ssdu_brains_last.pt"
    kept.parent.mkdir()
    kept.write_bytes(b"the state an earlier session kept")
    monkeypatch.setattr(ship, "MAX_STATE_BYTES", 1)  # nothing fits
    with pytest.raises(SystemExit, match="not kept"):
        ship.keep_state_of(run, kept)
    assert kept.read_bytes() == b"the state an earlier session kept"
    assert sorted(p.name for p in kept.parent.iterdir()) == ["ssdu_brains_last.pt"]  # no temp file left


def test_a_run_whose_last_pt_is_not_a_training_state_is_one_error_line(tmp_path):
    import subprocess

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, str(REPO / "data_scripts" / "ship_default_models.py"), "--in-progress", str(run)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert not (REPO / "training" / "in_progress" / "run_last.pt").exists()
