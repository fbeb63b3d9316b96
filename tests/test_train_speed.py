"""benchmarks/train_speed.py on a config that trains on a prepared set (``data.root``)."""

from __future__ import annotations

import pytest

from benchmarks import train_speed
from mrimsm.config import load_config
from mrimsm.data.datasets import read_manifest
from mrimsm.data.training_data import data_noise
from mrimsm.errors import MrimsmError


def _config_on(tmp_path, root) -> object:
    text = (train_speed.REPO / "configs" / "default_msm_brains.yaml").read_text()
    text = text.replace("root: ~/.cache/mrimsm/brains64_prep", f"root: {root}")
    assert f"root: {root}" in text
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_config(path)


def test_a_prepared_set_gives_its_size_and_measured_noise(tmp_path, prepared_measurements):
    size, rho = train_speed._data_size_and_noise(_config_on(tmp_path, prepared_measurements))
    manifest = read_manifest(prepared_measurements)
    assert size == 64 == manifest["size"]
    assert rho == pytest.approx(data_noise(manifest)) and rho >= 0.05  # the added 0.05 plus the files' own


def test_a_missing_prepared_set_is_one_error(tmp_path):
    with pytest.raises(MrimsmError, match="no manifest.json"):
        train_speed._data_size_and_noise(_config_on(tmp_path, tmp_path / "absent"))
