"""ESPIRiT maps: agreement with the simulated coils and with sigpy, normalization,
rectangular calibration, batching, ACS use."""

from __future__ import annotations

import numpy as np
import pytest

from mrimsm.data import simulate as sm
from mrimsm.data.espirit import acs_width, estimate_maps, normalize_maps
from mrimsm.data.fastmri_io import coil_images
from mrimsm.errors import MrimsmError


def _psnr(ref: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(np.abs(ref).max() ** 2 / np.mean(np.abs(ref - x) ** 2)))


def espirit_agreement(kspace: np.ndarray, image: np.ndarray, true_maps: np.ndarray, maps: np.ndarray) -> float:
    """PSNR (dB, peak max |x|) of the coil-combined image ``sum_c conj(maps_c) F^H k_c``
    against the simulated image, up to a global phase.

    ESPIRiT maps carry the phase of coil 0 as reference (sigpy's convention), so
    the combined image is ``x * exp(i angle C_0)``: the reference gets the same
    per-pixel rotation from the *true* coil 0, leaving one global phase to fit.
    """
    combined = (np.conj(maps) * coil_images(kspace)).sum(0)
    ref = image * np.exp(1j * np.angle(true_maps[0]))
    g = np.vdot(combined, ref)
    return _psnr(ref, combined * g / abs(g))


@pytest.fixture(scope="module")
def noiseless_slice():
    img = sm.mni_slices("axial", [80], 64)[0]
    return sm.simulate_multicoil(img, num_coils=8, noise_std=0.0, oversample_readout=False, seed=3)


def test_espirit_agrees_with_simulation_35db(noiseless_slice):
    s = noiseless_slice
    maps = estimate_maps(s["kspace"], calib_width=24, kernel_width=6)
    assert maps.shape == (8, 64, 64) and maps.dtype == np.complex64
    psnr = espirit_agreement(s["kspace"], s["image"], s["maps"], maps)
    print(f"ESPIRiT agreement (noiseless, fully sampled, 64x64, 8 coils): {psnr:.1f} dB")
    assert psnr >= 35
    # maps from a too small calibration block (5 x 5) do not pass: the check can fail
    poor = estimate_maps(s["kspace"], calib_width=5, kernel_width=3)
    assert espirit_agreement(s["kspace"], s["image"], s["maps"], poor) < 30


def test_torch_backend_matches_sigpy_espiritcalib():
    img = sm.mni_slices("coronal", [118], 32)[0]
    k = sm.simulate_multicoil(img, 4, 0.01, False, seed=5)["kspace"]
    ours = estimate_maps(k, calib_width=16, kernel_width=5)
    ref = estimate_maps(k, calib_width=16, kernel_width=5, backend="sigpy")
    inside_ours, inside_ref = np.abs(ours).sum(0) > 0, np.abs(ref).sum(0) > 0
    assert (inside_ours == inside_ref).mean() > 0.998
    both = inside_ours & inside_ref
    assert np.linalg.norm((ours - ref)[:, both]) / np.linalg.norm(ref[:, both]) < 1e-3


def test_rectangular_calibration_with_few_acs_columns(noiseless_slice):
    """5 fully sampled centre columns (the paper's 20 of 256, at 64): a 24 x 5 block
    with a 3 x 3 kernel gives good maps where the square 5 x 5 block cannot."""
    s = noiseless_slice
    mask = np.zeros(64, bool)
    mask[30:35] = True
    mask[::4] = True
    assert acs_width(mask) == 5
    k = s["kspace"] * mask
    rect = estimate_maps(k, calib_width=5, calib_rows=24, kernel_width=3)
    square = estimate_maps(k, calib_width=5, kernel_width=3)
    psnr_rect = espirit_agreement(s["kspace"], s["image"], s["maps"], rect)
    psnr_square = espirit_agreement(s["kspace"], s["image"], s["maps"], square)
    print(f"5 ACS columns: rectangular 24x5 {psnr_rect:.1f} dB, square 5x5 {psnr_square:.1f} dB")
    assert psnr_rect >= 35 > psnr_square


def test_coarse_grid_close_to_exact(noiseless_slice):
    exact = estimate_maps(noiseless_slice["kspace"])
    coarse = estimate_maps(noiseless_slice["kspace"], coarse=2)
    both = (np.abs(exact).sum(0) > 0) & (np.abs(coarse).sum(0) > 0)
    assert both.sum() > 0.98 * (np.abs(exact).sum(0) > 0).sum()
    assert np.linalg.norm((coarse - exact)[:, both]) / np.linalg.norm(exact[:, both]) < 2e-3


def test_maps_normalized_inside_support(noiseless_slice):
    maps = estimate_maps(noiseless_slice["kspace"])
    norm = (np.abs(maps) ** 2).sum(0)
    inside = norm > 0
    np.testing.assert_allclose(norm[inside], 1.0, atol=1e-5)
    obj = np.abs(noiseless_slice["image"]) > 0.1
    assert inside[obj].mean() > 0.99  # the whole object is covered
    assert (~inside).sum() > 0  # cropped outside


def test_only_the_calibration_block_is_used(noiseless_slice):
    """An undersampled scan with >= calib_width centre columns gives the same maps."""
    k = noiseless_slice["kspace"]
    mask = np.zeros(64, bool)
    mask[32 - 12 : 32 + 12] = True
    mask[::3] = True
    assert acs_width(mask) >= 24
    full = estimate_maps(k, calib_width=24)
    under = estimate_maps(k * mask, calib_width=24)
    np.testing.assert_allclose(under, full, atol=1e-5)


def test_batched_equals_per_slice_and_progress():
    images = sm.mni_slices("sagittal", [90, 100], 32)
    k = np.stack([sm.simulate_multicoil(im, 4, 0.01, False, seed=i)["kspace"] for i, im in enumerate(images)])
    calls = []
    batched = estimate_maps(k, calib_width=16, kernel_width=5, progress=calls.append)
    assert batched.shape == k.shape and calls == [1, 1]
    one = estimate_maps(k[1], calib_width=16, kernel_width=5)
    np.testing.assert_allclose(batched[1], one, atol=1e-6)


def test_acs_width():
    m = np.zeros(16, bool)
    assert acs_width(m) == 0
    m[6:11] = True
    m[0] = m[13] = True
    assert acs_width(m) == 5
    assert acs_width(np.ones(9, bool)) == 9


def test_normalize_maps_zero_stays_zero():
    maps = np.zeros((3, 4, 4), np.complex64)
    maps[:, 1, 1] = [1, 1j, 2]
    out = normalize_maps(maps)
    assert (np.abs(out[:, 1, 1]) ** 2).sum() == pytest.approx(1.0)
    assert np.all(out[:, 0, 0] == 0)


def test_bad_parameters():
    k = np.zeros((2, 16, 16), np.complex64)
    with pytest.raises(MrimsmError, match="kernel width"):
        estimate_maps(k, calib_width=6, kernel_width=6)
    with pytest.raises(MrimsmError, match="exceeds"):
        estimate_maps(k, calib_width=24, kernel_width=6)
    with pytest.raises(MrimsmError, match="shape"):
        estimate_maps(k[0])
    with pytest.raises(MrimsmError, match="backend"):
        estimate_maps(k, calib_width=8, kernel_width=4, backend="bart")
    with pytest.raises(MrimsmError, match="square"):
        estimate_maps(k, calib_width=8, calib_rows=12, kernel_width=4, backend="sigpy")
    with pytest.raises(MrimsmError, match="coarse"):
        estimate_maps(k, calib_width=8, kernel_width=4, coarse=3)


def test_calibration_region_stays_inside_the_common_centre_columns():
    from mrimsm.data.espirit import calibration_region, shared_acs_width

    w = 32
    a = np.zeros(w, bool)
    a[10:20] = True  # 10 centre columns, 6 left of w // 2 and 4 right of it
    b = a.copy()
    b[20] = True  # another slice acquires one more
    assert shared_acs_width(np.stack([a, b])) == 10 and shared_acs_width(np.zeros(w, bool)) == 0
    region = calibration_region(np.stack([a, b]))
    # the block estimate_maps takes starts at w // 2 - width // 2: 8 columns fit in [10, 20)
    assert (region.width, region.rows, region.kernel_width) == (8, 24, 4)
    start = w // 2 - region.width // 2
    assert a[start : start + region.width].all()
    wide = np.zeros(64, bool)
    wide[12:52] = True
    assert calibration_region(wide) == calibration_region(wide[None], max_width=24)
    assert (calibration_region(wide).width, calibration_region(wide).kernel_width) == (24, 6)
    assert calibration_region(wide, height=16).rows == 16  # a scan shorter than the rows
    assert calibration_region(wide, max_width=30, rows=20).rows == 30  # at least square
