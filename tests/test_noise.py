"""The k-space noise estimate (:mod:`mrimsm.data.noise`) on simulated scans of known noise."""

from __future__ import annotations

import numpy as np
import pytest

from mrimsm.data.noise import estimate_noise_std, slice_noise_std
from mrimsm.data.simulate import mni_slices, mni_split_indices, simulate_multicoil
from mrimsm.errors import MrimsmError


def _volume(orientation: str, size: int, pixel: str, num_coils: int, noise: float, oversample: bool,
            slices: int = 2) -> np.ndarray:
    idx = mni_split_indices(orientation, "heldout", step=2)
    mid = len(idx) // 2
    images = mni_slices(orientation, idx[mid : mid + slices], size, pixel=pixel)
    return np.stack([simulate_multicoil(im, num_coils, noise, oversample, seed=7 + j)["kspace"]
                     for j, im in enumerate(images)])


@pytest.mark.parametrize("num_coils", [4, 12])
@pytest.mark.parametrize("noise", [0.002, 0.01, 0.04])
def test_fastmri_like_fully_sampled(num_coils, noise):
    """Readout oversampled by 2, as fastMRI files are: within 3 %."""
    k = _volume("axial", 64, "fit", num_coils, noise, oversample=True)
    assert estimate_noise_std(k) == pytest.approx(noise, rel=0.03)


@pytest.mark.parametrize("orientation", ["coronal", "sagittal"])
def test_native_256_without_oversampling(orientation):
    k = _volume(orientation, 256, "native", 8, 0.005, oversample=False, slices=1)
    assert estimate_noise_std(k) == pytest.approx(0.005, rel=0.03)


@pytest.mark.parametrize("noise", [0.002, 0.02])
def test_undersampled_columns(noise):
    """Only the acquired columns count: the zero-filled ones (given or found) carry no noise."""
    k = _volume("axial", 64, "fit", 8, noise, oversample=True)
    cols = np.zeros(k.shape[-1], bool)
    cols[np.random.default_rng(0).choice(k.shape[-1], k.shape[-1] // 4, replace=False)] = True
    under = k * cols
    assert estimate_noise_std(under) == pytest.approx(noise, rel=0.05)
    assert estimate_noise_std(under, columns=cols) == pytest.approx(estimate_noise_std(under), rel=1e-6)
    # counting the zero-filled columns as acquired dilutes the energy 4-fold: the estimate halves
    assert estimate_noise_std(under, columns=np.ones_like(cols)) < 0.6 * noise


def test_zero_padded_edge_columns_do_not_count():
    k = _volume("axial", 64, "fit", 8, 0.01, oversample=True)
    padded = np.zeros(k.shape[:-1] + (k.shape[-1] + 16,), k.dtype)
    padded[..., 8:-8] = k
    assert estimate_noise_std(padded) == pytest.approx(0.01, rel=0.03)


def test_noise_free_scan_is_near_zero_and_more_noise_reads_higher():
    clean = _volume("axial", 64, "fit", 8, 0.0, oversample=True)
    assert estimate_noise_std(clean) < 1e-4
    low = estimate_noise_std(_volume("axial", 64, "fit", 8, 0.005, oversample=True))
    high = estimate_noise_std(_volume("axial", 64, "fit", 8, 0.02, oversample=True))
    assert high / low == pytest.approx(4.0, rel=0.05)


def test_object_filling_every_row_gives_an_upper_bound():
    """No empty readout position: the estimate is too high, never too low."""
    rng = np.random.default_rng(1)
    img = 0.5 + 0.5 * rng.random((64, 64))
    k = simulate_multicoil(img, 8, 0.01, oversample_readout=False, seed=3)["kspace"]
    assert slice_noise_std(k) >= 0.01


def test_bad_input():
    with pytest.raises(MrimsmError, match="complex"):
        estimate_noise_std(np.ones((1, 2, 8, 8), np.float32))
    k = np.ones((1, 2, 8, 8), np.complex64)
    k[0, 0, 0, 0] = np.nan
    with pytest.raises(MrimsmError, match="NaN"):
        estimate_noise_std(k)
    assert slice_noise_std(np.zeros((2, 8, 8), np.complex64)) == 0.0


def test_recon_measures_the_test_scan_noise_on_its_acquired_columns(tmp_path):
    from conftest import write_fake_fastmri
    from mrimsm.recon.volume import prepare_volume

    path = write_fake_fastmri(tmp_path / "scan.h5", "full", num_slices=2, size=64, num_coils=8, noise_std=0.004)
    vol = prepare_volume(path, 4.0, maps_fn=lambda k, m: np.ones_like(k) / np.sqrt(k.shape[1]))
    assert vol.noise_std == pytest.approx(0.004, rel=0.05)


def test_noise_schedule_is_diffpir_weighting_by_the_measured_noise():
    from mrimsm.diffusion.posterior import PosteriorSettings, _dc_lambda
    from mrimsm.diffusion.sampler import sampling_timesteps
    from mrimsm.diffusion.schedule import VPSchedule

    schedule = VPSchedule()
    chain = sampling_timesteps(schedule, 5, None)
    sigma = PosteriorSettings(dc_schedule="sigma", dc_lambda=1e-4)
    noise = PosteriorSettings(dc_schedule="noise", dc_lambda=1.0, dc_noise=0.01)
    for t_index, t, _ in chain:
        # at sigma_y = 0.01, dc_lambda 1 is the sigma schedule's 1e-4
        assert _dc_lambda(noise, schedule, chain)(t_index) == pytest.approx(_dc_lambda(sigma, schedule, chain)(t_index))
        # a 4x cleaner scan gets a 16x smaller prior weight (its data are trusted more)
        assert _dc_lambda(noise, schedule, chain, 0.0025)(t_index) == pytest.approx(
            _dc_lambda(sigma, schedule, chain)(t_index) / 16)
