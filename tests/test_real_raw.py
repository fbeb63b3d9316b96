"""data_scripts/real_raw.py: pyqmri's corner-DC k-space -> fastMRI's centred convention and
layout, on small synthetic arrays shaped like the pyqmri file (no download); one slow test
converts the real cached archive (skipped when it is absent)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from mrimsm.data.fastmri_io import coil_images, read_multicoil, rss
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _load_script():
    return load_script("data_scripts/real_raw.py", "real_raw_script")


real_raw = _load_script()
from archives import default_download_dir  # noqa: E402  (data_scripts/ is on the path via the script)


def _object(h: int, w: int, rng) -> np.ndarray:
    """A smooth positive object off the centre (top-left brighter), so a flip, a half-FOV
    shift or a transpose shows."""
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-(((yy - 0.4 * h) / (0.2 * h)) ** 2 + ((xx - 0.45 * w) / (0.25 * w)) ** 2))
    return (blob + 0.5 * (yy < h // 3) * (xx < w // 4)).astype(np.complex64)


def _pyqmri_like(angles: int, coils: int, h: int, w: int, seed: int = 0):
    """(angles, coils, 1, h, w) real / imag parts in pyqmri's convention: DC at [0, 0] and the
    image (object in the middle of the array) is ifft2(k); and the coil images."""
    rng = np.random.default_rng(seed)
    x = _object(h, w, rng)
    sens = (rng.standard_normal((coils, 1, 1)) + 1j * rng.standard_normal((coils, 1, 1))).astype(np.complex64)
    images = np.stack([sens * x * (1.0 + 0.1 * a) for a in range(angles)])  # (A, C, h, w)
    k = np.fft.fft2(images, axes=(-2, -1))[:, :, None]
    return k.real.astype(np.float32), k.imag.astype(np.float32), images


@pytest.mark.parametrize("shape", [(224, 224), (15, 12), (16, 17)])
def test_corner_dc_becomes_centred_with_the_same_image(shape):
    h, w = shape
    real, imag, images = _pyqmri_like(2, 3, h, w)
    k = real[:, :, 0] + 1j * imag[:, :, 0]
    assert np.unravel_index(np.abs(k[0, 0]).argmax(), (h, w)) == (0, 0)  # DC in the corner
    kc = real_raw.source_kspace(real, imag)
    assert kc.shape == (2, 3, h, w) and kc.dtype == np.complex64
    assert np.unravel_index(np.abs(kc[0, 0]).argmax(), (h, w)) == (h // 2, w // 2)  # fastMRI's centre
    # coil_images is fastMRI's centred orthonormal inverse FFT; pyqmri's ifft2 is unnormalized
    np.testing.assert_allclose(coil_images(kc) / np.sqrt(h * w), images, atol=2e-5 * np.abs(images).max())
    if h % 2 == 0 and w % 2 == 0:  # even sides: the very samples, moved and sign-flipped
        np.testing.assert_array_equal(np.abs(kc), np.abs(np.fft.fftshift(k.astype(np.complex64), axes=(-2, -1))))


def test_the_plain_fftshift_would_split_the_object():
    """What the shift must not be: fftshift(k) alone (image fftshift(ifft2(k))) moves the
    object by half the field of view."""
    real, imag, images = _pyqmri_like(1, 1, 224, 224)
    k = (real[:, :, 0] + 1j * imag[:, :, 0]).astype(np.complex64)
    wrong = coil_images(np.fft.fftshift(k, axes=(-2, -1)))[0, 0] / 224
    assert np.corrcoef(np.abs(wrong).ravel(), np.abs(images[0, 0]).ravel())[0, 1] < 0.5


def test_written_file_has_the_fastmri_layout(tmp_path):
    real, imag, images = _pyqmri_like(10, 13, 224, 224)
    source = {"kspace": real_raw.source_kspace(real, imag), "flip_angles_deg": list(range(1, 20, 2)), "tr_ms": 4.8}
    path = real_raw.write_file(tmp_path / real_raw.OUTPUT_NAME, source)
    f = read_multicoil(path)
    assert f.kspace.shape == (10, 13, 224, 224)
    np.testing.assert_array_equal(f.kspace, source["kspace"])
    assert f.reconstruction_rss.shape == (10, 224, 224)
    np.testing.assert_allclose(f.reconstruction_rss, rss(source["kspace"]), rtol=1e-6)
    expected = np.sqrt((np.abs(images) ** 2).sum(1)) * 224  # orthonormal: sqrt(224 * 224)
    np.testing.assert_allclose(f.reconstruction_rss, expected, atol=1e-4 * expected.max())
    assert f.pixel_mm == (1.0, 1.0) and f.recon_size == (224, 224)
    assert f.attrs["pixel_mm_assumed"] == 1.0 and list(f.attrs["flip_angles_deg"]) == list(range(1, 20, 2))
    assert f.attrs["max"] == pytest.approx(float(f.reconstruction_rss.max()))


def test_wrong_source_shape_is_one_line():
    from mrimsm.errors import MrimsmError

    with pytest.raises(MrimsmError, match="angles, coils, 1, H, W"):
        real_raw.source_kspace(np.zeros((2, 3, 224, 224)), np.zeros((2, 3, 224, 224)))


ARCHIVE = default_download_dir() / real_raw.ARCHIVE.filename


@pytest.mark.slow
@pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"{ARCHIVE} not downloaded (python data_scripts/real_raw.py OUT fetches it)")
def test_real_pyqmri_file(tmp_path):
    path = real_raw.build(tmp_path, cache=str(ARCHIVE.parent))
    f = read_multicoil(path)
    assert f.kspace.shape == (10, 13, 224, 224) and f.reconstruction_rss.shape == (10, 224, 224)
    assert [round(a) for a in f.attrs["flip_angles_deg"]] == list(range(1, 20, 2))
    with tarfile.open(ARCHIVE) as t:
        src = h5py.File(io.BytesIO(t.extractfile(real_raw.MEMBER).read()), "r")
        own = np.abs(src["images"][()][:, 0])  # the source's own coil-combined images
    for s in (0, 9):
        r = np.corrcoef(f.reconstruction_rss[s].ravel(), own[s].ravel())[0, 1]
        assert r > 0.98, (s, r)
    ref = f.reconstruction_rss[4]
    ys, xs = np.nonzero(ref > 0.2 * ref.max())
    assert abs(ys.mean() - 112) < 25 and abs(xs.mean() - 112) < 25  # the head in the middle
    assert ref[100:124, 100:124].mean() > 3 * ref[:10, :10].mean()
