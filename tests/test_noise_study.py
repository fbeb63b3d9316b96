"""benchmarks.noise_study: the study's settings and the configs it trains (valid configs
whose data noise, acceleration and loss are the setting's)."""

from __future__ import annotations

import json

import pytest

from benchmarks import noise_study as study


def test_settings_cover_both_losses_at_every_noise_and_the_oracle():
    settings = study.study_settings([0.0, 0.01, 0.1])
    pairs = [(s.data_rho, s.loss, s.accel) for s in settings]
    assert pairs == [(0.0, "noiseless", 4.0), (0.01, "noiseless", 4.0), (0.01, "noisy", 4.0),
                     (0.1, "noiseless", 4.0), (0.1, "noisy", 4.0), (0.0, "noiseless", 1.0)]
    names = [study.run_name(s) for s in settings]
    assert len(set(names)) == len(names) and names[-1] == "oracle"
    assert not any(s.oracle for s in study.study_settings([0.01], oracle=False))


@pytest.mark.parametrize("index", range(6))
def test_configs_validate_and_carry_the_setting(index):
    from mrimsm.config import config_from_dict

    s = study.study_settings([0.0, 0.01, 0.1])[index]
    raw = study.study_config(s, channels=16, seed=3)
    assert raw["diffusion"]["rho"] == (None if s.loss == "noisy" else 0.0)
    cfg = config_from_dict(raw)
    assert cfg.data.simulated.rho == s.data_rho and cfg.data.simulated.accel == s.accel
    assert cfg.model.model_channels == 16 and cfg.train.seed == 3


def test_trained_steps_reads_the_log(tmp_path):
    run = tmp_path / "r"
    assert study.trained_steps(run) == 0
    run.mkdir()
    (run / "last.pt").write_bytes(b"x")
    (run / "log.jsonl").write_text("\n".join(json.dumps({"step": k}) for k in (20, 40, 60)) + "\nnot json\n")
    assert study.trained_steps(run) == 60


def test_readme_table_is_a_result_file_the_generator_reads(tmp_path):
    import argparse

    from benchmarks.readme import read_table

    rows = [{"label": lab, "steps": st, "accel": a, "test_noise": n, "psnr_paper": 20.0 + a, "psnr_fastmri": 25.0 + n}
            for lab, st in (("CS-L1", ""), ("rho 0, noiseless loss", 900)) for a in (4.0, 6.0) for n in (0.002, 0.01)]
    args = argparse.Namespace(channels=16, slices=2, coils=8, msm_steps=20)
    (tmp_path / "t.csv").write_text(study.readme_table(rows, "python -m benchmarks.noise_study", args))
    table = read_table(tmp_path / "t.csv")
    assert table.header == ["prior", "steps", "R 4, noise 0.002", "R 4, noise 0.01", "R 6, noise 0.002",
                            "R 6, noise 0.01"]
    assert table.rows[1] == ["rho 0, noiseless loss", "900", "24.00 / 25.00", "24.00 / 25.01", "26.00 / 25.00",
                             "26.00 / 25.01"]
    assert {"date", "command", "setup"} <= table.provenance.keys()


def test_a_tiny_study_trains_resumes_and_evaluates_against_the_noise_free_object(tmp_path):
    """Two priors of 4 channels, 2 steps each, then 2 more (resumed); the rows carry the
    checkpoint's step and the metrics against the noise-free twin of the held-out files."""
    import csv

    from benchmarks import noise_study

    base = ["--rhos", "0.03", "--no-oracle", "--channels", "4", "--runs", str(tmp_path / "runs"),
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--chunk", "2"]
    assert noise_study.main(base + ["--steps", "2", "--train-only"]) == 0
    assert noise_study.main(base + ["--steps", "4", "--slices", "1", "--noise", "0.01", "--accels", "4",
                                    "--msm-steps", "2"]) == 0
    with open(tmp_path / "out" / "noise_study.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["label"] for r in rows] == ["CS-L1", "rho 0.03, noiseless loss", "rho 0.03, noisy loss"]
    assert {r["steps"] for r in rows[1:]} == {"4"} and rows[0]["steps"] == ""
    for r in rows:
        assert 5.0 < float(r["psnr_paper"]) < 60.0 and 0.0 < float(r["ssim_paper"]) <= 1.0
    cs = float(rows[0]["psnr_paper"])
    assert all(float(r["psnr_paper"]) < cs for r in rows[1:])  # 4 steps of a 4-channel prior lose to CS-L1
    for name in ("noise_study.md", "noise_study_readme.csv", "noise_study.png"):
        assert (tmp_path / "out" / name).is_file()


def test_study_rows_carry_the_step_and_the_metrics_against_the_noise_free_object():
    """Each row has its prior's setting and trained step, and PSNR / SSIM against the
    noise-free references, not against the noisy file's own RSS reference."""
    from types import SimpleNamespace

    import numpy as np

    from benchmarks.runs import Record, Run, truth_metrics
    from mrimsm.metrics import per_slice_metrics, volume_metrics

    rng = np.random.default_rng(0)
    clean = rng.random((2, 16, 16)).astype(np.float32)
    noisy_ref = clean + 0.1 * rng.standard_normal(clean.shape).astype(np.float32)
    settings = study.study_settings([0.01])
    entries = [Run("CS-L1", "cs")] + [Run(s.label, "msm") for s in settings]
    records = []
    for k, run in enumerate(entries):
        x = clean + 0.03 * (k + 1) * rng.standard_normal(clean.shape).astype(np.float32)
        records.append(Record(accel=6.0, label=run.label, method=run.method, group="main", volume="v.h5",
                              slices=[0, 1], paper=per_slice_metrics(noisy_ref, x),
                              fastmri=volume_metrics(noisy_ref, x), seconds_per_slice=0.5, nfe_per_slice=0.0,
                              achieved_accel=6.0, info={}, result=SimpleNamespace(reconstruction=x)))
    steps = {s.label: 100 + k for k, s in enumerate(settings)}
    truth = truth_metrics(records, {"v.h5": clean})
    rows = study.study_rows(records, entries, truth, settings, steps, 0.002)
    assert [r["label"] for r in rows] == [e.label for e in entries]
    assert [r["steps"] for r in rows] == ["", 100, 101, 102]
    assert [(r["data_rho"], r["loss"], r["train_accel"]) for r in rows] == [
        ("", "", ""), (0.01, "noiseless", 4.0), (0.01, "noisy", 4.0), (0.0, "noiseless", 1.0)]
    for row, rec in zip(rows, records):
        x = rec.result.reconstruction
        assert row["accel"] == 6.0 and row["test_noise"] == 0.002
        assert row["psnr_paper"] == pytest.approx(float(per_slice_metrics(clean, x)["psnr"].mean()))
        assert row["ssim_paper"] == pytest.approx(float(per_slice_metrics(clean, x)["ssim"].mean()))
        assert row["psnr_fastmri"] == pytest.approx(volume_metrics(clean, x)["psnr"])
        assert abs(row["psnr_paper"] - float(rec.paper["psnr"].mean())) > 0.1  # not the noisy reference's
