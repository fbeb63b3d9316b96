"""Checkpoint format: atomic writes, checked loads, RNG state round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mrimsm.checkpoint import (
    FORMAT,
    capture_rng_state,
    load_checkpoint,
    load_state_checked,
    resolve_checkpoint_path,
    restore_rng_state,
    save_checkpoint,
)
from mrimsm.errors import MrimsmError


def _fields(model: torch.nn.Module, step: int = 3) -> dict:
    return dict(
        method="toy",
        step=step,
        config={"method": "toy", "train": {"lr": 0.1}},
        meta={"operator": "Identity", "image_shape": [4, 4], "maps": torch.ones(2, 4, 4, dtype=torch.complex64)},
        model=model.state_dict(),
        ema=model.state_dict(),
        optimizer=None,
        scaler=None,
        rng={"ranks": [capture_rng_state({"epoch": 1})]},
    )


def test_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "last.pt", **_fields(model))
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == FORMAT and ckpt["step"] == 3 and ckpt["method"] == "toy"
    assert torch.equal(ckpt["model"]["weight"], model.weight.detach())
    assert ckpt["meta"]["maps"].dtype == torch.complex64
    assert ckpt["rng"]["ranks"][0]["sampler"] == {"epoch": 1}
    # a run directory resolves to its last.pt
    assert resolve_checkpoint_path(tmp_path) == tmp_path / "last.pt"
    assert load_checkpoint(tmp_path)["step"] == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_truncated_and_foreign_files(tmp_path):
    model = torch.nn.Linear(3, 2)
    good = save_checkpoint(tmp_path / "good.pt", **_fields(model))
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(MrimsmError, match="truncated or not an mrimsm checkpoint"):
        load_checkpoint(cut)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, this is not a checkpoint" * 10)
    with pytest.raises(MrimsmError, match="mrimsm checkpoint"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(MrimsmError, match="not an mrimsm checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(MrimsmError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    empty_dir = tmp_path / "run"
    empty_dir.mkdir()
    with pytest.raises(MrimsmError, match="without a checkpoint"):
        load_checkpoint(empty_dir)


def test_newer_format_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", **_fields(torch.nn.Linear(3, 2)))
    obj = torch.load(path, weights_only=True)
    obj["format_version"] = 99
    torch.save(obj, path)
    with pytest.raises(MrimsmError, match="newer"):
        load_checkpoint(path)


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", **_fields(torch.nn.Linear(3, 2), step=1))
    real_save = torch.save

    def broken_save(obj, f):
        real_save(obj, f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, **_fields(torch.nn.Linear(3, 2), step=2))
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_shape_mismatch_is_one_line(tmp_path):
    small, big = torch.nn.Linear(3, 2), torch.nn.Linear(3, 5)
    with pytest.raises(MrimsmError, match=r"another shape.*weight: \(2, 3\) in the checkpoint, \(5, 3\) here"):
        load_state_checked(big, small.state_dict(), "ckpt.pt")
    other = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(MrimsmError, match="another shape"):
        load_state_checked(other, small.state_dict(), "ckpt.pt")
    load_state_checked(small, torch.nn.Linear(3, 2).state_dict(), "ckpt.pt")  # same shape: fine


def test_rng_state_round_trip(tmp_path):
    fields = _fields(torch.nn.Linear(1, 1))
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    fields["rng"] = {"ranks": [capture_rng_state()]}
    save_checkpoint(tmp_path / "r.pt", **fields)
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"]["ranks"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn()) == expected


class _OnDevice:
    """Stands for a CUDA tensor (what ``load_checkpoint(map_location="cuda")`` gives): no
    ``.numpy()`` until ``.cpu()`` copies it to the host, as torch raises on the GPU."""

    def __init__(self, t: torch.Tensor):
        self._t = t

    def cpu(self) -> torch.Tensor:
        return self._t

    def numpy(self):
        raise TypeError("can't convert cuda:0 device type tensor to numpy")


def test_rng_state_restores_from_a_state_loaded_onto_a_gpu(tmp_path):
    """Found on the first H100 run: resuming on cuda failed in restore_rng_state."""
    np.random.seed(4)
    torch.manual_seed(5)
    state = capture_rng_state()
    expected = (np.random.rand(), torch.rand(1).item())
    state["numpy"]["keys"] = _OnDevice(state["numpy"]["keys"])
    state["torch"] = _OnDevice(state["torch"])
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(state)
    assert (np.random.rand(), torch.rand(1).item()) == expected
