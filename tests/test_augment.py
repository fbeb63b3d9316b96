"""Left-right flips that keep the multi-coil measurement model exact (mrimsm.data.augment)."""

from __future__ import annotations

import pytest
import torch

from mrimsm.data.augment import flip_batch, reflect_columns, reflect_index
from mrimsm.physics.fft import fft2c


@pytest.mark.parametrize("n", [8, 9])
def test_reflection_commutes_with_the_centred_fft(n):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, n, dtype=torch.complex64, generator=g)
    torch.testing.assert_close(fft2c(reflect_columns(x)), reflect_columns(fft2c(x)), atol=1e-5, rtol=1e-5)
    idx = reflect_index(n)
    assert sorted(idx.tolist()) == list(range(n)) and torch.equal(idx[idx], torch.arange(n))  # an involution
    assert idx[n // 2] == n // 2  # the centre column stays


def test_flip_batch_gives_the_measurement_of_the_flipped_object():
    g = torch.Generator().manual_seed(1)
    b, c, h, w = 4, 3, 8, 10
    x = torch.randn(b, h, w, dtype=torch.complex64, generator=g)
    maps = torch.randn(b, c, h, w, dtype=torch.complex64, generator=g)
    mask = (torch.rand(b, 1, 1, w, generator=g) < 0.5).float()
    y = fft2c(maps * x[:, None]) * mask
    batch = {"y": y, "maps": maps, "mask": mask, "index": torch.arange(b)}
    out = flip_batch(batch, 0.5, torch.Generator().manual_seed(1))
    flipped = torch.rand(b, generator=torch.Generator().manual_seed(1)) < 0.5
    assert 0 < int(flipped.sum()) < b  # this seed flips some and keeps some
    for i in range(b):
        xi = reflect_columns(x[i]) if flipped[i] else x[i]
        want = fft2c(out["maps"][i] * xi) * out["mask"][i]
        torch.testing.assert_close(out["y"][i], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["y"][i], reflect_columns(y[i]) if flipped[i] else y[i])
    assert torch.equal(out["index"], batch["index"])
    assert flip_batch(batch, 0.0, torch.Generator().manual_seed(1))["y"] is y



def test_flip_batch_respects_allowed_with_the_same_draw():
    g = torch.Generator().manual_seed(2)
    y = torch.randn(6, 2, 4, 8, dtype=torch.complex64, generator=g)
    batch = {"y": y, "mask": torch.ones(6, 1, 1, 8)}
    allowed = torch.tensor([True, False, True, False, True, False])
    free = flip_batch(batch, 1.0, torch.Generator().manual_seed(3))
    held = flip_batch(batch, 1.0, torch.Generator().manual_seed(3), allowed)
    for i in range(6):
        torch.testing.assert_close(free["y"][i], reflect_columns(y[i]))
        torch.testing.assert_close(held["y"][i], reflect_columns(y[i]) if allowed[i] else y[i])


def test_sagittal_slices_are_not_flipped_in_training(tmp_path):
    """The manifest's acquisitions reach the dataset; flip_exclude (default [SAG]) keeps
    sagittal examples unflipped, so the trainer's batches never hold a backwards head."""
    import json

    import numpy as np

    from mrimsm.config import DataConfig, config_from_dict
    from mrimsm.errors import MrimsmError
    from mrimsm.data.datasets import MeasurementDataset
    from mrimsm.data.simulate import simulate_volume_file
    from mrimsm.data.prep import PrepOptions, prepare_dataset

    raw = tmp_path / "raw"
    raw.mkdir()
    for k, o in enumerate(("axial", "sagittal")):
        simulate_volume_file(raw / f"mni_{o}.h5", o, [80, 82], 64, 4, 0.0, True, seed=k)
    prepare_dataset(raw, tmp_path / "out", PrepOptions(size=64, skip_last=0, val_fraction=0.0, acquisition=None), on_warning=lambda m: None)
    ds = MeasurementDataset(tmp_path / "out", "train")
    acq = json.loads((tmp_path / "out" / "manifest.json").read_text())["inputs"]
    assert sorted(i["acquisition"] for i in acq) == ["AXT1", "SAGT1"]
    assert sorted(ds.acquisitions) == ["AXT1", "AXT1", "SAGT1", "SAGT1"]
    np.testing.assert_array_equal(ds.flippable(["SAG"]), [a.startswith("AX") for a in ds.acquisitions])
    assert ds.flippable([]).all()
    assert DataConfig(root="x").flip_exclude == ["SAG"]
    with pytest.raises(MrimsmError, match="flip_exclude"):
        config_from_dict({"method": "msm", "data": {"root": "x", "flip_exclude": [""]}, "train": {}})
