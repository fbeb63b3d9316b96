"""mrimsm.metrics against fastmri.evaluate, and the paper's per-slice convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastmri import evaluate as fm_eval
from skimage.metrics import structural_similarity

from mrimsm import metrics


def _volumes(seed: int = 0, shape=(3, 32, 40)):
    rng = np.random.default_rng(seed)
    s, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-(((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2))
    gt = np.stack([blob * (1 + 0.5 * k) + 0.05 * rng.random((h, w)) for k in range(s)])
    pred = gt + 0.05 * rng.standard_normal(gt.shape)
    return gt.astype(np.float32), np.abs(pred).astype(np.float32)


def test_volume_metrics_equal_fastmri_evaluate():
    gt, pred = _volumes()
    assert metrics.psnr(gt, pred) == pytest.approx(float(fm_eval.psnr(gt, pred)), rel=1e-12)
    assert metrics.ssim(gt, pred) == pytest.approx(fm_eval.ssim(gt, pred).item(), rel=1e-12)
    assert metrics.nmse(gt, pred) == pytest.approx(float(fm_eval.nmse(gt, pred)), rel=1e-6)


def test_equal_fastmri_on_tiny_raw_units():
    gt, pred = _volumes(6)
    gt, pred = gt * np.float32(1e-4), pred * np.float32(1e-4)  # fastMRI's raw intensity scale
    assert metrics.psnr(gt, pred) == pytest.approx(float(fm_eval.psnr(gt, pred)), rel=1e-12)
    assert metrics.ssim(gt, pred) == pytest.approx(fm_eval.ssim(gt, pred).item(), rel=1e-12)


def test_volume_metrics_use_volume_max_not_slice_max():
    gt, pred = _volumes()
    # SSIM/PSNR with the first slice's max differ from the volume-max convention.
    assert metrics.psnr(gt, pred) != pytest.approx(metrics.psnr(gt, pred, data_range=gt[0].max()))
    assert metrics.ssim(gt, pred) != pytest.approx(metrics.ssim(gt, pred, data_range=gt[0].max()))


def test_metrics_accept_torch_and_complex():
    gt, pred = _volumes(1)
    phase = np.exp(1j * np.linspace(0, 3, gt.size)).reshape(gt.shape)
    got = metrics.volume_metrics(torch.from_numpy(gt * phase), pred * phase)
    want = metrics.volume_metrics(gt, pred)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-5)


@pytest.mark.filterwarnings("ignore:divide by zero")
def test_perfect_reconstruction():
    gt, _ = _volumes(2)
    assert metrics.psnr(gt, gt) == np.inf
    assert metrics.ssim(gt, gt) == pytest.approx(1.0)
    assert metrics.nmse(gt, gt) == 0.0
    s = metrics.per_slice_metrics(gt, gt)
    assert np.all(s["ssim"] == pytest.approx(1.0)) and np.all(s["nmse"] == 0)


def test_per_slice_convention_normalizes_each_slice():
    gt, pred = _volumes(3)
    s = metrics.per_slice_metrics(gt, pred)
    assert s["psnr"].shape == (gt.shape[0],)
    # Hand-computed for slice 1: min-max to [0, 1], PSNR peak 1, 2-D SSIM data_range 1.
    g64, p64 = gt[1].astype(np.float64), pred[1].astype(np.float64)
    g = (g64 - g64.min()) / (g64.max() - g64.min())
    p = (p64 - p64.min()) / (p64.max() - p64.min())
    mse = np.mean((g - p) ** 2)
    assert s["psnr"][1] == pytest.approx(10 * np.log10(1 / mse), rel=1e-9)
    assert s["ssim"][1] == pytest.approx(structural_similarity(g, p, data_range=1.0, win_size=7), rel=1e-9)
    assert s["nmse"][1] == pytest.approx(np.sum((g - p) ** 2) / np.sum(g**2), rel=1e-9)
    # Invariant to a per-slice affine intensity change of the prediction; fastMRI's is not.
    scaled = pred * np.array([1.0, 3.0, 0.5], dtype=np.float32)[:, None, None] + 2.0
    s2 = metrics.per_slice_metrics(gt, scaled)
    np.testing.assert_allclose(s2["psnr"], s["psnr"], rtol=1e-5)
    assert metrics.psnr(gt, scaled) < metrics.psnr(gt, pred) - 3


def test_all_metrics_keys_and_single_slice():
    gt, pred = _volumes(4)
    m = metrics.all_metrics(gt[0], pred[0])
    assert set(m) == {"psnr", "ssim", "nmse", "psnr_slice", "ssim_slice", "nmse_slice"}
    assert m["ssim"] == pytest.approx(fm_eval.ssim(gt[:1], pred[:1]).item())


def test_shape_mismatch_raises():
    gt, pred = _volumes(5)
    with pytest.raises(ValueError):
        metrics.psnr(gt, pred[:, :-1])
