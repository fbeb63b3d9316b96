"""Simulated multi-coil k-space from MNI152 slices, and the fastMRI files written from it."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from mrimsm.data import simulate as sm
from mrimsm.data.fastmri_io import coil_images, read_multicoil, rss
from mrimsm.errors import MrimsmError


def test_mni_volume_found_without_importing_nilearn():
    code = (
        "import sys; from mrimsm.data.simulate import mni_volume; v = mni_volume(); "
        "assert 'nilearn' not in sys.modules; print(v.shape, v.dtype, float(v.max()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(197, 233, 189) float32 1.0"


@pytest.mark.parametrize("orientation", sm.ORIENTATIONS)
def test_mni_slices_shape_range_and_content(orientation):
    idx = sm.mni_split_indices(orientation, "heldout")[:2]
    sl = sm.mni_slices(orientation, idx, 48)
    assert sl.shape == (2, 48, 48) and sl.dtype == np.float32
    assert sl.min() >= 0 and 0.5 < sl.max() <= 1.0 + 1e-6
    # brain in the middle, background at the border
    assert sl[:, 20:28, 20:28].mean() > 0.2 and sl[:, :2].max() < 0.05
    assert not np.allclose(sl[0], sl[1])


def test_orientations_differ_and_bad_input():
    a = sm.mni_slices("axial", [80], 32)[0]
    c = sm.mni_slices("coronal", [118], 32)[0]
    assert np.abs(a - c).mean() > 0.05
    with pytest.raises(MrimsmError, match="orientation"):
        sm.mni_slices("oblique", [1], 32)
    with pytest.raises(MrimsmError, match="out of range"):
        sm.mni_slices("axial", [189], 32)


def test_native_pixels_pad_without_resampling():
    # native: the template's 1 mm pixels, centre zero-padded (233 x 197 axial -> 256 x 256)
    vol = sm.mni_volume()
    raw = vol[:, :, 80].T[::-1]  # the axial display convention of upright_slice
    sl = sm.mni_slices("axial", [80], 256, pixel="native")[0]
    h, w = raw.shape
    top, left = (256 - h) // 2, (256 - w) // 2
    np.testing.assert_array_equal(sl[top : top + h, left : left + w], np.clip(raw, 0, None))
    assert sl[:top].max() == 0 and sl[:, :left].max() == 0 and sl[top + h :].max() == 0
    # smaller than the slice: centre crop; fit mode differs (it resamples)
    small = sm.mni_slices("axial", [80], 160, pixel="native")[0]
    ct, cl = (h - 160) // 2, (w - 160) // 2
    np.testing.assert_array_equal(small, np.clip(raw[ct : ct + 160, cl : cl + 160], 0, None))
    assert not np.allclose(sm.mni_slices("axial", [80], 256)[0], sl)
    with pytest.raises(MrimsmError, match="pixel mode"):
        sm.mni_slices("axial", [80], 64, pixel="scaled")


def test_native_scale_resamples_the_pixels():
    """scale s: pixels of 1 / s mm, so the brain's extent scales by s; 1 keeps the native slice."""
    def extent(img):  # rows and columns holding brain
        return (img.max(axis=1) > 0.05).sum(), (img.max(axis=0) > 0.05).sum()

    native = sm.mni_slices("coronal", [118], 256, pixel="native")[0]
    np.testing.assert_array_equal(sm.mni_slices("coronal", [118], 256, pixel="native", scale=1.0)[0], native)
    for s in (0.7, 1.2):
        img = sm.mni_slices("coronal", [118], 256, pixel="native", scale=s)[0]
        assert img.shape == (256, 256) and img.dtype == np.float32 and img.min() >= 0
        for got, ref in zip(extent(img), extent(native)):
            assert abs(got / ref - s) < 0.03, (s, got, ref)
        # the same total signal per mm^2: mean intensity over the brain about unchanged
        assert abs(img[img > 0.05].mean() - native[native > 0.05].mean()) < 0.03
    with pytest.raises(MrimsmError, match="needs pixel native"):
        sm.mni_slices("axial", [80], 64, scale=0.5)
    with pytest.raises(MrimsmError, match="needs pixel native"):
        sm.mni_slices("axial", [80], 64, pixel="native", scale=0.0)


def test_simulated_raw_scales_add_files_and_keep_the_first(tmp_path):
    kw = dict(size=256, num_coils=2, noise_std=0.01, slices_per_file=3, step=8, pixel="native")
    one = sm.write_simulated_raw(tmp_path / "a", "heldout", **kw)
    two = sm.write_simulated_raw(tmp_path / "b", "heldout", scales=[1.0, 0.7], **kw)
    assert [p.name for p in two[: len(one)]] == [p.name for p in one]
    assert [p.name for p in two[len(one):]] == [p.name.replace(".h5", "_x0.7.h5") for p in one]
    with h5py.File(one[0], "r") as a, h5py.File(two[0], "r") as b, h5py.File(two[len(one)], "r") as c:
        np.testing.assert_array_equal(a["kspace"][()], b["kspace"][()])  # scale 1 unchanged
        assert "resampled by 0.7" in c.attrs["simulated_from"]
        ref_a, ref_c = a["reconstruction_rss"][0], c["reconstruction_rss"][0]
        assert (ref_c > 0.1).sum() < 0.6 * (ref_a > 0.1).sum()  # 0.7^2 = 0.49 of the area
    with pytest.raises(MrimsmError, match="distinct"):
        sm.write_simulated_raw(tmp_path / "c", "heldout", scales=[1.0, 1.0], **kw)
    par = sm.write_simulated_raw(tmp_path / "d", "heldout", scales=[1.0, 0.7], workers=2, **kw)
    assert [p.name for p in par] == [p.name for p in two]
    for a, b in zip(par, two):
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            np.testing.assert_array_equal(fa["kspace"][()], fb["kspace"][()])


@pytest.mark.parametrize("orientation", sm.ORIENTATIONS)
def test_split_keeps_whole_ranges_apart(orientation):
    spec = sm.MNI_SPLIT[orientation]
    train = sm.mni_split_indices(orientation, "train", step=1)
    held = sm.mni_split_indices(orientation, "heldout", step=1)
    assert held == list(range(*spec["heldout"]))
    gap = min(abs(t - h) for t in train for h in held)
    assert gap > spec["guard"]
    lo, hi = spec["usable"]
    assert all(lo <= t < hi for t in train)
    assert len(sm.mni_split_indices(orientation, "train")) >= 40


def test_coil_maps_normalized():
    maps = sm.birdcage_coil_maps(12, (64, 32), object_shape=(32, 32))
    assert maps.shape == (12, 64, 32) and maps.dtype == np.complex64
    np.testing.assert_allclose((np.abs(maps) ** 2).sum(0), 1.0, atol=1e-5)
    # the maps differ between coils (a real birdcage, not a constant)
    assert np.std(np.abs(maps[0])) > 0.05


def test_simulation_forward_model_noiseless():
    img = sm.mni_slices("axial", [80], 32)[0]
    s = sm.simulate_multicoil(img, num_coils=6, noise_std=0.0, oversample_readout=True, seed=4)
    assert s["kspace"].shape == (6, 64, 32) and s["kspace"].dtype == np.complex64
    assert s["maps"].shape == (6, 64, 32) and s["image"].shape == (64, 32)
    np.testing.assert_allclose(coil_images(s["kspace"]), s["maps"] * s["image"], atol=1e-5)
    # the object sits in the central half of the oversampled readout, with |x| = image
    np.testing.assert_allclose(np.abs(s["image"][16:48]), img, atol=1e-5)
    assert np.all(s["image"][:16] == 0) and np.all(s["image"][48:] == 0)
    # sum_c |C_c|^2 = 1, so the RSS of noiseless data is |x|
    np.testing.assert_allclose(s["reconstruction_rss"], img, atol=1e-5)
    # a non-trivial smooth phase
    ph = np.angle(s["image"][16:48][img > 0.3])
    assert np.ptp(ph) > 0.3


def test_simulation_phase_encode_oversampling_widens_the_columns_only():
    """``columns``: the object in the middle of a wider phase-encode field of view (as in
    fastMRI brain's 768 x 396 files); same object, same reference, zero elsewhere."""
    img = sm.mni_slices("axial", [80], 32)[0]
    s = sm.simulate_multicoil(img, num_coils=4, noise_std=0.0, oversample_readout=True, seed=4, columns=40)
    assert s["kspace"].shape == (4, 64, 40) and s["image"].shape == (64, 40)
    np.testing.assert_allclose(coil_images(s["kspace"]), s["maps"] * s["image"], atol=1e-5)
    np.testing.assert_allclose(np.abs(s["image"][16:48, 4:36]), img, atol=1e-5)
    assert np.all(s["image"][:, :4] == 0) and np.all(s["image"][:, 36:] == 0)
    np.testing.assert_allclose(s["reconstruction_rss"], img, atol=1e-5)
    with pytest.raises(MrimsmError, match="columns"):
        sm.simulate_multicoil(img, columns=30)


def test_simulation_noise_level_and_determinism():
    img = sm.mni_slices("coronal", [118], 32)[0]
    clean = sm.simulate_multicoil(img, 8, 0.0, False, seed=7)["kspace"]
    noisy = sm.simulate_multicoil(img, 8, 0.05, False, seed=7)["kspace"]
    again = sm.simulate_multicoil(img, 8, 0.05, False, seed=7)["kspace"]
    other = sm.simulate_multicoil(img, 8, 0.05, False, seed=8)["kspace"]
    np.testing.assert_array_equal(noisy, again)
    assert not np.allclose(noisy, other)
    d = noisy - clean
    assert d.real.std() == pytest.approx(0.05, rel=0.05)
    assert d.imag.std() == pytest.approx(0.05, rel=0.05)
    assert abs(np.mean(d.real * d.imag)) < 0.05 * 0.05 * 0.1


def test_write_fastmri_file_with_mask(tmp_path):
    k = np.ones((1, 2, 8, 6), np.complex64)
    mask = np.array([0, 1, 1, 1, 0, 1], bool)
    sm.write_fastmri_file(tmp_path / "m.h5", k * mask, None, {"acquisition": "AXT1"}, mask=mask, recon_size=(4, 6))
    f = read_multicoil(tmp_path / "m.h5")
    np.testing.assert_array_equal(f.mask, mask)
    assert f.attrs["acquisition"] == "AXT1" and f.recon_size == (4, 6)


def test_sample_file_default_layout(fastmri_sample):
    f = read_multicoil(fastmri_sample)
    assert f.kspace.shape == (4, 16, 128, 64)
    assert f.reconstruction_rss.shape == (4, 64, 64)
    assert f.recon_size == (64, 64)
    for key in ("acquisition", "max", "norm", "patient_id"):
        assert key in f.attrs
    assert f.attrs["norm"] == pytest.approx(float(np.linalg.norm(f.reconstruction_rss)), rel=1e-5)
    np.testing.assert_allclose(rss(f.kspace, (64, 64)), f.reconstruction_rss, rtol=1e-5, atol=1e-6)
    # realistic noise: a visible but small background floor in the RSS image
    background = f.reconstruction_rss[:, :4, :4]
    assert 0.01 < background.mean() < 0.15 * f.attrs["max"]
    # slices come from the held-out range
    held = set(sm.mni_split_indices("axial", "heldout", step=1))
    used = [int(v) for v in f.attrs["simulated_from"].split("[")[1].rstrip("]").split(",")]
    assert set(used) <= held and len(used) == 4


def test_sample_file_is_deterministic(tmp_path, fastmri_sample):
    again = sm.make_sample_file(tmp_path / "again.h5")
    with h5py.File(fastmri_sample, "r") as a, h5py.File(again, "r") as b:
        np.testing.assert_array_equal(a["kspace"][()], b["kspace"][()])
        np.testing.assert_array_equal(a["reconstruction_rss"][()], b["reconstruction_rss"][()])


def test_make_sample_script(tmp_path):
    out = tmp_path / "s.h5"
    subprocess.run(
        [sys.executable, "data_scripts/make_sample.py", "--out", str(out), "--num-slices", "2", "--size", "32",
         "--coils", "4"],
        check=True, capture_output=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]),
    )
    assert read_multicoil(out).kspace.shape == (2, 4, 64, 32)


def test_simulated_raw_volumes_and_script(tmp_path):
    paths = sm.write_simulated_raw(tmp_path / "a", "heldout", size=32, num_coils=2, noise_std=0.0,
                                   slices_per_file=3, step=4)
    # 4 held-out slices per orientation with step 4 -> files of 3 + 1 slices
    assert [p.name for p in paths][:2] == ["mni_axial_072-080.h5", "mni_axial_084-084.h5"]
    f = read_multicoil(paths[0])
    assert f.kspace.shape == (3, 2, 64, 32) and f.attrs["acquisition"] == "AXT1"
    assert read_multicoil(paths[-1]).attrs["acquisition"] == "SAGT1"
    out = subprocess.run(
        [sys.executable, "data_scripts/simulate_dataset.py", str(tmp_path / "b"), "--split", "heldout",
         "--size", "32", "--coils", "2", "--slices-per-file", "3", "--step", "4", "--noise", "0"],
        check=True, capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]),
    )
    assert "wrote 6 files" in out.stdout
    with h5py.File(tmp_path / "b" / "mni_axial_072-080.h5", "r") as a, h5py.File(paths[0], "r") as b:
        np.testing.assert_array_equal(a["kspace"][()], b["kspace"][()])
