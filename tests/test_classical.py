"""Zero-filled and CS-L1-wavelet reconstructions (mrimsm.baselines.classical)."""

from __future__ import annotations

import numpy as np
import pytest
import sigpy
import sigpy.mri
import torch

from mrimsm import metrics
from mrimsm.baselines import classical
from mrimsm.physics.masks import cartesian_family, seed_for


def _np_fft2c(x):
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _np_ifft2c(y):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(y, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _scene(num_slices=2, n=64, coils=8, accel=6.0, noise=0.005, seed=0):
    """Shepp-Logan slices with a smooth phase, birdcage maps (sum |C|^2 = 1),
    seeded RandomCartesian masks, complex Gaussian noise on the sampled entries."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n] / n
    base = sigpy.shepp_logan((n, n)).real
    images = np.stack(
        [base * (1 - 0.2 * k) * np.exp(1j * (1.5 * yy - 1.0 * xx + 0.3 * k)) for k in range(num_slices)]
    ).astype(np.complex64)
    maps = sigpy.mri.birdcage_maps((coils, n, n)).astype(np.complex64)
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))
    maps = np.repeat(maps[None], num_slices, 0)
    family = cartesian_family("random", accel, center_fraction=max(0.08, 4 / n))
    masks = np.stack([family((n, n), seed_for("scene", k, seed)) for k in range(num_slices)])
    kspace = _np_fft2c(images[:, None] * maps)
    kspace = kspace + noise * (rng.standard_normal(kspace.shape) + 1j * rng.standard_normal(kspace.shape))
    kspace = (kspace * masks[:, None, None, :]).astype(np.complex64)
    return images, maps, masks, kspace


def test_zero_filled_equals_adjoint_in_numpy():
    _, maps, masks, kspace = _scene(coils=4)
    want = (np.conj(maps) * _np_ifft2c(kspace * masks[:, None, None, :])).sum(1)
    for mask in (masks, masks[:, None, None, :].astype(np.float32), torch.from_numpy(masks)):
        got = classical.zero_filled(torch.from_numpy(kspace), mask, torch.from_numpy(maps))
        assert got.dtype == torch.complex64 and got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want, atol=2e-6, rtol=0)


def test_zero_filled_applies_the_mask():
    _, maps, masks, kspace = _scene(coils=4)
    dirty = kspace + 1.0 * (~masks)[:, None, None, :]  # junk off the mask must be ignored
    np.testing.assert_allclose(
        classical.zero_filled(dirty, masks, maps).numpy(), classical.zero_filled(kspace, masks, maps).numpy(), atol=1e-6
    )
    shared = classical.zero_filled(kspace[:1], masks[0], maps[:1])  # a (W,) mask
    np.testing.assert_allclose(shared.numpy(), classical.zero_filled(kspace[:1], masks[:1], maps[:1]).numpy())


def test_cs_batched_equals_l1waveletrecon_per_slice():
    _, maps, masks, kspace = _scene(num_slices=2, n=32, coils=4, accel=4.0)
    batched = classical.cs_l1_wavelet(kspace, masks, maps, lamda=2e-3, max_iter=20)
    looped = classical.cs_l1_wavelet(kspace, masks, maps, lamda=2e-3, max_iter=20, batched=False)
    # and sigpy's app called directly, on slice 1, with the same step size
    direct = sigpy.mri.app.L1WaveletRecon(
        kspace[1], maps[1], 2e-3, max_iter=20, alpha=1.0, show_pbar=False
    ).run()
    assert batched.shape == (2, 32, 32) and batched.dtype == torch.complex64
    scale = float(np.abs(direct).max())
    np.testing.assert_allclose(batched.numpy(), looped.numpy(), atol=1e-5 * scale)
    np.testing.assert_allclose(batched[1].numpy(), direct, atol=1e-5 * scale)


def test_cs_is_deterministic_and_reports_slices():
    _, maps, masks, kspace = _scene(num_slices=2, n=32, coils=4, accel=4.0)
    done = []
    a = classical.cs_l1_wavelet(kspace, masks, maps, max_iter=10, on_slice=done.append)
    b = classical.cs_l1_wavelet(kspace, masks, maps, max_iter=10)
    assert torch.equal(a, b) and sum(done) == 2


def test_cs_beats_zero_filled_at_r6():
    images, maps, masks, kspace = _scene(num_slices=2, n=64, coils=8, accel=6.0)
    ref = np.abs(images)
    zf = classical.zero_filled(kspace, masks, maps).abs().numpy()
    cs = classical.cs_l1_wavelet(kspace, masks, maps).abs().numpy()
    psnr_zf, psnr_cs = metrics.psnr(ref, zf), metrics.psnr(ref, cs)
    assert psnr_cs > psnr_zf + 2.0, (psnr_zf, psnr_cs)
    assert metrics.ssim(ref, cs) > metrics.ssim(ref, zf)


def test_cs_lambda_matters():
    images, maps, masks, kspace = _scene(num_slices=1, n=32, coils=4, accel=4.0)
    small = classical.cs_l1_wavelet(kspace, masks, maps, lamda=1e-4, max_iter=30)
    huge = classical.cs_l1_wavelet(kspace, masks, maps, lamda=10.0, max_iter=30)
    assert float(huge.abs().max()) < 0.05 * float(small.abs().max())  # everything shrunk to ~0


def test_shape_mismatch_is_an_error():
    _, maps, masks, kspace = _scene(num_slices=1, n=32, coils=4, accel=4.0)
    with pytest.raises(ValueError):
        classical.cs_l1_wavelet(kspace, masks, maps[:, :2], max_iter=2)
