"""fastMRI's other file layouts through ``mrimsm recon``: single-coil files, test-style
files with their own mask and no reference, and knee-like files whose edge columns are
zero padding (encoding limits in the ISMRMRD header, or all-zero columns without one)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from mrimsm.cli.main import main
from mrimsm.data.fastmri_io import encoded_columns, read_header, read_multicoil
from mrimsm.data.simulate import ismrmrd_header_xml, mni_slices, mni_split_indices, simulate_multicoil
from mrimsm.errors import MrimsmError
from mrimsm.metrics import psnr
from mrimsm.physics.masks import RandomCartesian
from mrimsm.recon import prepare_volume

SIZE = 64


def _run(args: list, capsys) -> tuple[int, list[str], str]:
    rc = main([a if isinstance(a, str) else os.fspath(a) for a in args])
    out = capsys.readouterr()
    return rc, out.err.strip().splitlines(), out.out


def _fft2c(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _ifft2c(k: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def write_singlecoil(path: Path, num_slices: int = 1, noise_std: float = 0.002, seed: int = 0,
                     mask: np.ndarray | None = None) -> Path:
    """fastMRI's single-coil layout: ``kspace`` ``(S, 2h, w)`` (readout oversampled by 2),
    ``reconstruction_esc`` ``(S, h, w)`` = |centre crop of ifft2c(kspace)|, an ISMRMRD header."""
    idx = mni_split_indices("axial", "heldout", step=2)
    images = mni_slices("axial", idx[3 : 3 + num_slices], SIZE)
    rng = np.random.default_rng(seed)
    kspace, esc = [], []
    for i, im in enumerate(images):
        x = simulate_multicoil(im, 1, 0.0, oversample_readout=True, seed=seed + i)["image"]
        k = _fft2c(x)
        k = k + noise_std * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
        kspace.append(k.astype(np.complex64))
        top = (k.shape[0] - SIZE) // 2
        esc.append(np.abs(_ifft2c(k))[top : top + SIZE].astype(np.float32))
    kspace, esc = np.stack(kspace), np.stack(esc)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if mask is None:
            f.create_dataset("kspace", data=kspace)
            f.create_dataset("reconstruction_esc", data=esc)
        else:
            f.create_dataset("kspace", data=kspace * mask)
            f.create_dataset("mask", data=mask)
        f.create_dataset("ismrmrd_header", data=np.bytes_(ismrmrd_header_xml(kspace.shape[-2:], (SIZE, SIZE), 1)))
        f.attrs["acquisition"] = "CORPD_FBK"
    return path


def write_padded(path: Path, encoded: tuple, header: bool = True, num_slices: int = 1,
                 own_mask: np.ndarray | None = None, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A knee-like multi-coil file: columns outside ``encoded`` are zero (padding), with the
    limits in the header (``header``) or no header at all; returns (path, reference)."""
    idx = mni_split_indices("axial", "heldout", step=2)
    images = mni_slices("axial", idx[5 : 5 + num_slices], SIZE)
    sims = [simulate_multicoil(im, 4, 0.002, oversample_readout=True, seed=seed + i) for i, im in enumerate(images)]
    kspace = np.stack([s["kspace"] for s in sims])
    kspace[..., : encoded[0]] = 0
    kspace[..., encoded[1] :] = 0
    from mrimsm.data.fastmri_io import rss

    ref = rss(kspace, (SIZE, SIZE)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if own_mask is None:
            f.create_dataset("kspace", data=kspace)
            f.create_dataset("reconstruction_rss", data=ref)
        else:
            f.create_dataset("kspace", data=kspace * own_mask)
            f.create_dataset("mask", data=own_mask)
        if header:
            f.create_dataset("ismrmrd_header", data=np.bytes_(
                ismrmrd_header_xml(kspace.shape[-2:], (SIZE, SIZE), 4, encoded=encoded)))
    return path, ref


# -- single-coil files ---------------------------------------------------------------------


def test_singlecoil_file_reads_as_one_coil_with_its_esc_reference(tmp_path):
    path = write_singlecoil(tmp_path / "sc.h5", num_slices=2)
    with pytest.raises(MrimsmError, match="single-coil file given to a multi-coil command"):
        read_multicoil(path)  # prep-fastmri and other multi-coil readers still refuse it
    data = read_multicoil(path, single_coil=True)
    assert data.single_coil and data.kspace.shape == (2, 1, 2 * SIZE, SIZE)
    assert data.reference_name == "reconstruction_esc" and data.reference.shape == (2, SIZE, SIZE)
    assert data.recon_size == (SIZE, SIZE)
    head = read_header(path, single_coil=True)
    assert head["shape"] == (2, 1, 2 * SIZE, SIZE) and head["single_coil"] and head["has_rss"]


def test_singlecoil_volume_has_identity_maps_on_the_support_and_the_esc_reference(tmp_path):
    path = write_singlecoil(tmp_path / "sc.h5")
    vol = prepare_volume(path, 4, seed=0)
    assert vol.single_coil and vol.maps.shape == (1, 1, SIZE, SIZE)
    assert set(np.unique(vol.maps).tolist()) == {0, 1}  # the identity on the support, 0 off it
    assert vol.reference_name == "reconstruction_esc"
    on = vol.maps[0, 0].real > 0
    obj = vol.reference[0] > 0.1 * vol.reference.max()
    assert on[obj].mean() > 0.99 and 0.3 < on.mean() < 0.95  # the object, not the whole field
    # with the identity map, A^H y of the fully sampled data is the ESC image on the support
    full = prepare_volume(path, 1.0, seed=0)
    inside = full.maps[:, 0].real > 0
    assert np.allclose(full.zero_filled[inside], full.reference[inside], atol=1e-4 * full.reference.max())


def test_recon_on_a_singlecoil_file_every_method(tmp_path, capsys):
    path = write_singlecoil(tmp_path / "in" / "sc.h5")
    out = tmp_path / "out"
    methods = ("zero-filled", "cs", "ssdu", "msm")
    rc, err, text = _run(["recon", path, "-R", "4", *[a for m in methods for a in ("-m", m)], "--steps", "4",
                          "-o", out, "-q"], capsys)
    assert rc == 0, (err, text)
    assert "single-coil file: identity coil map on the object's support, reference reconstruction_esc" in text
    with h5py.File(path) as f:
        esc = f["reconstruction_esc"][()]
    scores = {}
    written = sorted(out.rglob("*.h5"))
    assert len(written) == len(methods), written
    for name in written:
        with h5py.File(name) as f:
            scores[f.attrs["method"]] = psnr(esc, f["reconstruction"][()])
    assert set(scores) == set(methods), scores
    zf = scores["zero-filled"]
    # single-coil R = 4 at 64 x 64 is hard for every method; the shipped priors are multi-coil
    # brains (measured: zero-filled 20.9, CS 21.2, SSDU 22.9, MSM (4 steps) 18-21 dB)
    assert scores["cs"] > zf and scores["ssdu"] > zf, scores
    assert scores["msm"] > zf - 4.0, scores  # sane, not diverged (-59 dB without the support)


# -- test-style files: their own mask, no reference ----------------------------------------


def test_own_mask_without_reference_says_there_are_no_metrics(tmp_path, capsys):
    mask = RandomCartesian(4, 0.16)((1, SIZE), seed=3)
    path = write_singlecoil(tmp_path / "in" / "t.h5", mask=mask)
    rc, err, text = _run(["recon", path, "-m", "zero-filled", "-m", "cs", "-R", "8", "-o", tmp_path / "t_out", "-q"], capsys)
    assert rc == 0, (err, text)
    assert err == ["note: t.h5 carries its own mask (R = 4.00); --accel 8 is ignored for it"]
    assert "the file's own mask" in text
    assert "(no reconstruction_esc in the file: no metrics)" in text
    for method in ("zero-filled", "cs"):
        with h5py.File(tmp_path / "t_out" / f"t.{method}.h5") as f:
            assert "psnr" not in f.attrs and f.attrs["acceleration"] == pytest.approx(4.0)
            assert f["reconstruction"].shape == (1, SIZE, SIZE)


# -- zero-padded edge columns --------------------------------------------------------------


def test_encoded_columns_follow_fastmri_padding_rule():
    header = ismrmrd_header_xml((128, SIZE), (SIZE, SIZE), 4, encoded=(4, 56))
    assert encoded_columns(header, SIZE) == (4, 56)
    assert encoded_columns(ismrmrd_header_xml((128, SIZE), (SIZE, SIZE), 4), SIZE) == (0, SIZE)
    assert encoded_columns(header, SIZE + 2) is None  # a header for another matrix is not trusted
    assert encoded_columns(None, SIZE) is None and encoded_columns(b"<not xml", SIZE) is None


@pytest.mark.parametrize("header", [True, False], ids=["limits-in-header", "zero-columns-only"])
def test_padded_columns_are_never_sampled_nor_counted(tmp_path, header):
    encoded = (4, 56)  # asymmetric, as in fastMRI knee files: the k-space centre is column W // 2
    path, _ = write_padded(tmp_path / "knee.h5", encoded, header=header, num_slices=3)
    for accel in (4.0, 6.0):
        vol = prepare_volume(path, accel, seed=1)
        assert vol.encoded == encoded
        assert not vol.mask[:, : encoded[0]].any() and not vol.mask[:, encoded[1] :].any()
        n_enc = encoded[1] - encoded[0]
        assert vol.mask.sum(axis=1).tolist() == [round(n_enc / accel)] * 3
        assert vol.achieved_accel == pytest.approx(n_enc / round(n_enc / accel))
        assert vol.mask[:, SIZE // 2 - 2 : SIZE // 2 + 2].all()  # the calibration centre
        assert np.isfinite(vol.maps).all() and np.abs(vol.maps).max() > 0


def test_unpadded_files_keep_their_masks(fastmri_factory):
    path = fastmri_factory("plain.h5", "full", num_slices=2, size=SIZE, num_coils=4)
    vol = prepare_volume(path, 4.0, seed=0)
    assert vol.encoded is None
    from mrimsm.physics.masks import seed_for

    cf = 8 / SIZE  # the floor of MIN_CENTER_COLUMNS at 64 columns
    expected = np.stack([RandomCartesian(4.0, cf)((1, SIZE), seed_for("plain.h5", s, 0)) for s in (0, 1)])
    assert np.array_equal(vol.mask, expected)


def test_own_mask_on_padded_file_counts_encoded_columns_only(tmp_path):
    encoded = (4, 56)
    mask = np.zeros(SIZE, dtype=bool)
    mask[28:36] = True
    mask[np.arange(6, 54, 4)] = True
    path, _ = write_padded(tmp_path / "knee_test.h5", encoded, own_mask=mask)
    vol = prepare_volume(path, None)
    assert vol.mask_source == "file" and vol.encoded == encoded
    assert vol.achieved_accel == pytest.approx((encoded[1] - encoded[0]) / mask.sum())


def test_recon_on_a_padded_file_notes_the_encoded_columns(tmp_path, capsys):
    path, ref = write_padded(tmp_path / "in" / "knee.h5", (4, 56), num_slices=1)
    out = tmp_path / "knee_cs.h5"
    rc, err, text = _run(["recon", path, "-R", "4", "-m", "cs", "-o", out, "-q"], capsys)
    assert rc == 0, (err, text)
    assert "encoded columns 4..55 of 64: the others are zero padding" in text
    with h5py.File(out) as f:
        assert f.attrs["acceleration_achieved"] == pytest.approx(52 / 13)
        assert psnr(ref, f["reconstruction"][()]) > 25


# -- prep-fastmri on zero-padded files -----------------------------------------------------


def test_target_encoded_columns_map_the_raw_limits_onto_the_prep_grid():
    from mrimsm.data.prep.volume import target_encoded_columns

    assert target_encoded_columns(None, 368, 256) is None
    assert target_encoded_columns((0, 368), 368, 256) is None
    # 368 raw columns (centre 184) on 256 target ones (centre 128), k-spacing 368 / 256 raw:
    # first encoded raw column 16 -> 128 + (16 - 184) * 256 / 368 = 11.13 -> 12 (inside);
    # last, 351 -> 128 + (351 - 184) * 256 / 368 = 244.17 -> 244, so right = 245
    assert target_encoded_columns((16, 352), 368, 256) == (12, 245)
    assert target_encoded_columns((16, 352), 368, 368) == (16, 352)  # same grid: unchanged


def test_mask_on_encoded_columns_never_samples_padding_and_counts_encoded_columns():
    from mrimsm.physics.masks import RandomCartesian, encoded_acceleration, mask_on_encoded_columns

    family = RandomCartesian(accel=4, center_fraction=0.08)
    for seed in range(5):
        m = mask_on_encoded_columns(family, (64, 64), (4, 56), seed=seed)
        assert not m[:4].any() and not m[56:].any() and m[32]
        assert encoded_acceleration(m[None], (4, 56))[0] == pytest.approx(52 / m.sum())
        assert 52 / m.sum() == pytest.approx(4)  # round(52 / 4) = 13 columns: every drawn one is encoded
    assert (mask_on_encoded_columns(family, (64, 64), None, seed=1) == family((64, 64), seed=1)).all()


@pytest.mark.parametrize("header", [True, False])
def test_prep_masks_skip_the_padded_columns(tmp_path, capsys, header):
    """prep-fastmri on a knee-like file: the shards' masks never sample the padded columns
    (mapped onto the prep grid), R counts the encoded ones, the manifest records them."""
    import json

    encoded = (4, 56)
    write_padded(tmp_path / "raw" / "knee.h5", encoded, header=header, num_slices=2)
    out = tmp_path / "out"
    rc, _, err = _run(["prep-fastmri", str(tmp_path / "raw"), str(out), "--size", str(SIZE),
                       "--mask", "random", "--val-fraction", "0", "--acquisition", "all", "--skip-first", "0", "--skip-last", "0", "-q"], capsys)
    assert rc == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["shards"]
    lo, hi = entry["encoded_columns"]
    assert (lo, hi) == (4, 56)  # the prep grid is the raw grid here (64 columns, no crop)
    with h5py.File(out / entry["shard"], "r") as f:
        mask = f["mask"][()]
        assert list(f.attrs["encoded_columns"]) == [lo, hi]
    assert not mask[:, :lo].any() and not mask[:, hi:].any()
    for r, m in zip(entry["achieved_acceleration"], mask):
        assert r == pytest.approx((hi - lo) / m.sum())
        assert r == pytest.approx(4)  # 13 of the 52 encoded columns
