"""MeasurementDataset over prepared shards: shapes, no reference in train, collate, errors."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mrimsm.data.datasets import TRAIN_KEYS, MeasurementDataset, collate
from mrimsm.errors import MrimsmError
from mrimsm.physics.operators import MultiCoilMRI


def test_train_items_shapes_and_keys(prepared_measurements):
    ds = MeasurementDataset(prepared_measurements, "train")
    assert len(ds) == 3
    item = ds[0]
    assert set(item) == TRAIN_KEYS  # structural: no reference, no full k-space
    assert item["y"].shape == (8, 64, 64) and item["y"].dtype == torch.complex64
    assert item["mask"].shape == (1, 1, 64) and item["mask"].dtype == torch.float32
    assert item["maps"].shape == (8, 64, 64) and item["maps"].dtype == torch.complex64
    assert isinstance(item["scale"], float) and item["scale"] > 0
    assert item["index"] == 0
    # y is zero off the mask, non-zero on it
    off = item["mask"][0, 0] == 0
    assert torch.all(item["y"][..., off] == 0) and torch.any(item["y"][..., ~off] != 0)
    # maps: sum_c |C_c|^2 = 1 inside the support
    norm = (item["maps"].abs() ** 2).sum(0)
    inside = norm > 0
    assert torch.allclose(norm[inside], torch.ones(()), atol=1e-4) and inside.float().mean() > 0.2
    assert ds.masks.shape == (3, 64) and ds.masks.dtype == bool
    np.testing.assert_array_equal(ds.masks[2], ds[2]["mask"][0, 0].numpy().astype(bool))
    assert ds[-1]["index"] == 2
    with pytest.raises(IndexError):
        ds[3]


def test_train_shards_hold_no_reference(prepared_measurements):
    manifest = json.loads((prepared_measurements / "manifest.json").read_text())
    train = [s for s in manifest["shards"] if s["split"] == "train"]
    assert train
    for s in train:
        with h5py.File(prepared_measurements / s["shard"], "r") as f:
            assert set(f) == {"y", "mask", "maps", "scale", "slice_index"}


def test_val_items_add_reference(prepared_measurements):
    ds = MeasurementDataset(prepared_measurements, "val")
    assert len(ds) == 3
    item = ds[1]
    assert set(item) == TRAIN_KEYS | {"reference"}
    ref = item["reference"]
    assert ref.shape == (64, 64) and ref.dtype == torch.complex64
    # the reference is the normalized image: max |x| about 1
    assert 0.8 < ref.abs().max().item() < 1.1
    # and the measurement is consistent with it: y ~ M F C x + noise (rho = 0.05)
    op = MultiCoilMRI(item["maps"][None], item["mask"][None])
    resid = item["y"][None] - op.forward(ref[None])
    measured = resid[..., item["mask"][0, 0] > 0]
    assert measured.real.std().item() < 0.2


def test_collate_and_dataloader(prepared_measurements):
    ds = MeasurementDataset(prepared_measurements, "train")
    batch = collate([ds[0], ds[2]])
    assert batch["y"].shape == (2, 8, 64, 64)
    assert batch["mask"].shape == (2, 1, 1, 64)
    assert batch["maps"].shape == (2, 8, 64, 64)
    assert batch["scale"].shape == (2,) and batch["scale"].dtype == torch.float32
    assert batch["index"].tolist() == [0, 2]
    # the batch feeds the shared operator directly
    zf = MultiCoilMRI(batch["maps"], batch["mask"]).adjoint(batch["y"])
    assert zf.shape == (2, 64, 64)
    loader = DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate, num_workers=1)
    sizes = [b["y"].shape[0] for b in loader]
    assert sizes == [2, 1]
    val = collate([MeasurementDataset(prepared_measurements, "val")[0]])
    assert val["reference"].shape == (1, 64, 64)
    with pytest.raises(ValueError):
        collate([])


def test_dataset_pickles_without_open_handles(prepared_measurements):
    ds = MeasurementDataset(prepared_measurements, "train")
    _ = ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[0]["y"], ds[0]["y"])


def test_bad_roots_and_splits(tmp_path, prepared_measurements):
    with pytest.raises(MrimsmError, match="manifest.json"):
        MeasurementDataset(tmp_path)
    with pytest.raises(MrimsmError, match="split"):
        MeasurementDataset(prepared_measurements, "test")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(MrimsmError, match="unreadable manifest"):
        MeasurementDataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": [{"shard": "train/x.h5", "split": "train"}]}))
    with pytest.raises(MrimsmError, match="missing shard .*x.h5"):
        MeasurementDataset(tmp_path)
