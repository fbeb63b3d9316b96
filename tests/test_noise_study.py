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
