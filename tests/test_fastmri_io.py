"""fastMRI HDF5 I/O: reading, validation errors, writing in the submission layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from mrimsm.data.fastmri_io import (
    MultiCoilFile,
    coil_images,
    crop_to_reconstruction,
    pixel_size_from_header,
    read_header,
    read_multicoil,
    recon_size_from_header,
    rss,
    write_reconstruction,
)
from mrimsm.errors import MrimsmError


def test_read_full_file(fastmri_full):
    f = read_multicoil(fastmri_full)
    assert isinstance(f, MultiCoilFile)
    assert f.kspace.shape == (2, 8, 64, 32) and f.kspace.dtype == np.complex64
    assert f.reconstruction_rss.shape == (2, 32, 32) and f.reconstruction_rss.dtype == np.float32
    assert f.mask is None
    assert f.attrs["acquisition"] == "AXT2"
    assert set(["max", "norm", "patient_id"]) <= set(f.attrs)
    assert f.attrs["max"] == pytest.approx(float(f.reconstruction_rss.max()))
    assert f.ismrmrd_header.startswith(b"<?xml")
    assert f.recon_size == (32, 32)
    assert f.slices == [0, 1] and f.num_slices_in_file == 2


def test_reference_is_cropped_rss_of_kspace(fastmri_full):
    f = read_multicoil(fastmri_full)
    np.testing.assert_allclose(rss(f.kspace, (32, 32)), f.reconstruction_rss, rtol=1e-5, atol=1e-6)


def test_read_slice_subset(fastmri_full):
    full = read_multicoil(fastmri_full)
    one = read_multicoil(fastmri_full, slices=[1])
    assert one.kspace.shape == (1, 8, 64, 32)
    np.testing.assert_array_equal(one.kspace[0], full.kspace[1])
    np.testing.assert_array_equal(one.reconstruction_rss[0], full.reconstruction_rss[1])
    with pytest.raises(MrimsmError, match="out of range"):
        read_multicoil(fastmri_full, slices=[2])


def test_read_undersampled_file(fastmri_undersampled):
    f = read_multicoil(fastmri_undersampled)
    assert f.mask.shape == (32,) and f.mask.dtype == bool
    assert f.reconstruction_rss is None
    off = ~f.mask
    assert np.all(f.kspace[..., off] == 0) and np.any(f.kspace[..., f.mask] != 0)
    # no rss: the header's reconSpace gives the reference size
    assert f.recon_size == (32, 32)


def test_header_only_read(fastmri_full):
    h = read_header(fastmri_full)
    assert h["shape"] == (2, 8, 64, 32)
    assert h["recon_size"] == (32, 32)
    assert h["has_rss"] and not h["has_mask"]
    assert h["attrs"]["acquisition"] == "AXT2"


def test_recon_size_without_header_falls_back_to_kspace(fastmri_factory):
    f = read_multicoil(fastmri_factory("plain.h5", "full_plain"))
    assert f.ismrmrd_header is None
    assert recon_size_from_header(None) is None
    assert f.recon_size == (32, 32)  # from reconstruction_rss


def test_pixel_size_from_the_header_and_its_gaps(tmp_path):
    """reconSpace field of view / matrix; written by the simulator from the pixels it used
    (readout and phase-encode oversampling do not change them); None when not stated."""
    from mrimsm.data.simulate import ismrmrd_header_xml, mni_split_indices, simulate_volume_file

    # a 320 x 320 reference in a 640 x 396 matrix: rows FOV 224 mm over 320, columns 277.2 mm over 396
    assert pixel_size_from_header(ismrmrd_header_xml((640, 396), (320, 320), 4, (224.0, 277.2))) == \
        pytest.approx((0.7, 0.7))
    assert pixel_size_from_header(ismrmrd_header_xml((64, 32), (32, 32), 4)) == pytest.approx((220 / 32, 220 / 32))
    for bad in [None, b"", b"<not xml", b'<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"/>',
                ismrmrd_header_xml((64, 32), (32, 32), 4, (0.0, 220.0))]:
        assert pixel_size_from_header(bad) is None
    f = simulate_volume_file(tmp_path / "a.h5", "axial", mni_split_indices("axial", "heldout")[:1], 256, 2,
                             0.0, True, pixel="native", scale=0.7, columns=300)
    assert read_multicoil(f).pixel_mm == pytest.approx((1 / 0.7, 1 / 0.7), abs=1e-3)
    f = simulate_volume_file(tmp_path / "b.h5", "axial", mni_split_indices("axial", "heldout")[:1], 64, 2)
    assert read_multicoil(f).pixel_mm == pytest.approx((233 / 64, 233 / 64), abs=1e-3)


BAD = {
    "not_hdf5": "not an HDF5 file",
    "truncated": "truncated or corrupt",
    "no_kspace": "no 'kspace'",
    "single_coil": "single-coil file",
    "wrong_rank": "must have 4 dims",
    "real_dtype": "must be complex",
    "nan": "NaN or Inf",
    "inf": "NaN or Inf",
    "zero_coils": "zero coils",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_files_raise_one_line_errors(fastmri_factory, kind):
    path = fastmri_factory(f"{kind}.h5", kind)
    with pytest.raises(MrimsmError) as info:
        read_multicoil(path)
    msg = str(info.value)
    assert BAD[kind] in msg
    assert "\n" not in msg and str(path) in msg


@pytest.mark.parametrize("kind", ["not_hdf5", "truncated", "no_kspace", "single_coil", "real_dtype", "zero_coils"])
def test_bad_files_fail_header_check_too(fastmri_factory, kind):
    with pytest.raises(MrimsmError, match=BAD[kind]):
        read_header(fastmri_factory(f"{kind}.h5", kind))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MrimsmError, match="no such file"):
        read_multicoil(tmp_path / "nope.h5")
    with pytest.raises(MrimsmError, match="directory"):
        read_multicoil(tmp_path)


def test_crop_matches_fastmri_center_crop():
    from fastmri.data.transforms import center_crop

    x = np.random.default_rng(0).standard_normal((3, 41, 36)).astype(np.float32)
    for hw in [(20, 36), (41, 17), (32, 32)]:
        ours = crop_to_reconstruction(x, hw)
        theirs = center_crop(torch.from_numpy(x), hw).numpy()
        np.testing.assert_array_equal(ours, theirs)
    with pytest.raises(MrimsmError):
        crop_to_reconstruction(x, (42, 10))


def test_coil_images_match_fastmri_ifft2c():
    import fastmri

    k = (np.random.default_rng(1).standard_normal((2, 3, 16, 12, 2))).astype(np.float32)
    theirs = fastmri.ifft2c(torch.from_numpy(k)).numpy()
    ours = coil_images(k[..., 0] + 1j * k[..., 1])
    np.testing.assert_allclose(ours.real, theirs[..., 0], atol=1e-5)
    np.testing.assert_allclose(ours.imag, theirs[..., 1], atol=1e-5)


def test_write_reconstruction_layout_and_fastmri_scoring(tmp_path, fastmri_full):
    from fastmri.evaluate import nmse, psnr

    f = read_multicoil(fastmri_full)
    noisy = f.reconstruction_rss + 0.01 * np.random.default_rng(0).standard_normal(f.reconstruction_rss.shape)
    out = write_reconstruction(tmp_path / "out" / "rec.h5", noisy, attrs={"max": f.attrs["max"], "x": None},
                               extra={"std": np.ones((2, 32, 32), np.float32)})
    with h5py.File(out, "r") as h:
        rec = h["reconstruction"][()]
        assert rec.dtype == np.float32 and rec.shape == (2, 32, 32)
        assert h.attrs["max"] == pytest.approx(f.attrs["max"]) and "x" not in h.attrs
        assert h["std"].shape == (2, 32, 32)
    # fastMRI's own evaluation code scores it against the reference
    assert nmse(f.reconstruction_rss, rec) < 0.05
    assert psnr(f.reconstruction_rss, rec) > 20
    assert nmse(f.reconstruction_rss, f.reconstruction_rss) == 0


def test_write_reconstruction_is_atomic(tmp_path):
    path = tmp_path / "rec.h5"
    write_reconstruction(path, np.zeros((1, 4, 4), np.float32))
    before = path.read_bytes()
    with pytest.raises(Exception):
        write_reconstruction(path, np.ones((1, 4, 4), np.float32), extra={"bad": np.array([object()])})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec.h5"]


def test_write_reconstruction_rejects_bad_arrays(tmp_path):
    with pytest.raises(MrimsmError, match="slices, H, W"):
        write_reconstruction(tmp_path / "a.h5", np.zeros((4, 4), np.float32))
    with pytest.raises(MrimsmError, match="complex"):
        write_reconstruction(tmp_path / "a.h5", np.zeros((1, 4, 4), np.complex64))
    assert not (tmp_path / "a.h5").exists()


def test_fastmri_slice_dataset_reads_our_files(fastmri_full):
    """fastMRI's own loader parses our layout and header."""
    from fastmri.data import SliceDataset

    ds = SliceDataset(fastmri_full.parent, challenge="multicoil", use_dataset_cache=False)
    assert len(ds) == 2
    kspace, mask, target, attrs, fname, slice_idx = ds[1]
    assert kspace.shape == (8, 64, 32)
    assert target.shape == (32, 32)
    assert attrs["recon_size"] == (32, 32, 1) and attrs["encoding_size"] == (64, 32, 1)
    assert attrs["padding_left"] == 0 and attrs["padding_right"] == 32
