"""Shared fixtures: small fake fastMRI multi-coil files, good and bad.

Good files are simulated from MNI152 slices (:mod:`mrimsm.data.simulate`), so
data code is tested on realistic anatomy without real fastMRI data.

Fixtures:
    fastmri_factory    callable ``(name, kind="full", **kw) -> Path`` writing into a
                       fresh temp dir; kinds: see ``FAKE_KINDS``.
    fastmri_full       fully sampled, readout oversampled: kspace (2, 8, 64, 32),
                       reconstruction_rss (2, 32, 32), noise 0.01.
    fastmri_undersampled  already undersampled test-style file with a ``mask`` (32,)
                       and no reconstruction_rss: kspace (2, 8, 64, 32).
    fastmri_sample     the default demo sample (session scope): kspace (4, 16, 128, 64).
    prepared_measurements  a small prep-fastmri output dir (session scope): 2 volumes of
                       3 slices, 64 x 64, 8 coils, rho 0.05; one train, one val.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import torch

# A test run started in the background (`make test &`, nohup) inherits an ignored SIGINT, and
# so would every command the interrupt tests start and then signal: Python keeps SIGINT
# ignored when it starts with it ignored. Give this process a handler again; a child gets
# the default disposition at exec and installs its own, as it does from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: Kinds the factory can write. The first three are valid files.
FAKE_KINDS = (
    "full",  # fully sampled, readout oversampled by 2
    "full_plain",  # fully sampled, no oversampling, no header
    "undersampled",  # k-space zero off a fastMRI-style mask, `mask` dataset, no rss
    "single_coil",  # kspace (S, H, W)
    "wrong_rank",  # kspace (S, C, H, W, 2)
    "real_dtype",  # kspace float32
    "nan",  # one NaN in kspace
    "inf",  # one Inf in kspace
    "zero_coils",  # kspace (S, 0, H, W)
    "no_kspace",  # only reconstruction_rss
    "not_hdf5",  # a text file with .h5 suffix
    "truncated",  # a valid file cut in half
)



def load_script(relative_path: str, name: str):
    """A repository script that is not a package module (``data_scripts/``, ``training/``),
    imported as module ``name`` (registered in ``sys.modules``: dataclasses look their module
    up while a class is made)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

def _simulated_volume(num_slices: int, size: int, num_coils: int, oversample: bool, noise_std: float, seed: int):
    from mrimsm.data.simulate import mni_slices, mni_split_indices, simulate_multicoil

    idx = mni_split_indices("axial", "train", step=2)
    start = (seed * 7) % (len(idx) - num_slices)
    images = mni_slices("axial", idx[start : start + num_slices], size)
    sims = [simulate_multicoil(im, num_coils, noise_std, oversample, seed=seed * 100 + k) for k, im in enumerate(images)]
    kspace = np.stack([s["kspace"] for s in sims])
    ref = np.stack([s["reconstruction_rss"] for s in sims])
    return kspace, ref, sims


def write_fake_fastmri(
    path: Path,
    kind: str = "full",
    num_slices: int = 2,
    size: int = 32,
    num_coils: int = 8,
    noise_std: float = 0.01,
    seed: int = 0,
    acquisition: str = "AXT2",
) -> Path:
    """Write one fake fastMRI file of the given ``kind`` (see ``FAKE_KINDS``)."""
    from mrimsm.data.simulate import write_fastmri_file
    from mrimsm.physics.masks import RandomCartesian

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = {"acquisition": acquisition, "patient_id": f"fake-{seed}"}
    if kind == "not_hdf5":
        path.write_text("this is not an HDF5 file\n")
        return path
    oversample = kind != "full_plain"
    kspace, ref, _ = _simulated_volume(num_slices, size, num_coils, oversample, noise_std, seed)
    if kind in ("full", "full_plain"):
        write_fastmri_file(path, kspace, ref, attrs)
        if kind == "full_plain":
            with h5py.File(path, "a") as f:
                del f["ismrmrd_header"]
        return path
    if kind == "undersampled":
        mask = RandomCartesian(4, 0.08)((kspace.shape[-2], kspace.shape[-1]), seed=seed)
        write_fastmri_file(path, kspace * mask, None, dict(attrs, acceleration=4, num_low_frequency=3), mask=mask,
                           recon_size=ref.shape[-2:])
        return path
    if kind == "truncated":
        write_fastmri_file(path, kspace, ref, attrs)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    with h5py.File(path, "w") as f:
        if kind == "single_coil":
            f.create_dataset("kspace", data=kspace[:, 0])
        elif kind == "wrong_rank":
            f.create_dataset("kspace", data=kspace[..., None])
        elif kind == "real_dtype":
            f.create_dataset("kspace", data=np.abs(kspace).astype(np.float32))
        elif kind in ("nan", "inf"):
            bad = kspace.copy()
            bad[0, 0, 1, 1] = np.nan if kind == "nan" else np.inf
            f.create_dataset("kspace", data=bad)
        elif kind == "zero_coils":
            f.create_dataset("kspace", data=kspace[:, :0])
        elif kind == "no_kspace":
            f.create_dataset("reconstruction_rss", data=ref)
        else:
            raise ValueError(f"unknown fake kind {kind!r}")
        for key, value in attrs.items():
            f.attrs[key] = value
    return path


@pytest.fixture
def fastmri_factory(tmp_path) -> Callable[..., Path]:
    """``make(name, kind="full", **kw) -> Path`` under ``tmp_path / "raw"``."""

    def make(name: str = "file.h5", kind: str = "full", **kw) -> Path:
        return write_fake_fastmri(tmp_path / "raw" / name, kind, **kw)

    return make


@pytest.fixture
def fastmri_full(fastmri_factory) -> Path:
    return fastmri_factory("full.h5", "full")


@pytest.fixture
def fastmri_undersampled(fastmri_factory) -> Path:
    return fastmri_factory("undersampled.h5", "undersampled")


@pytest.fixture(scope="session")
def fastmri_sample(tmp_path_factory) -> Path:
    from mrimsm.data.simulate import make_sample_file

    return make_sample_file(tmp_path_factory.mktemp("sample") / "sample.h5")


@pytest.fixture(scope="session")
def prepared_measurements(tmp_path_factory) -> Path:
    """A small prepared directory (``mrimsm prep-fastmri`` output): two 64 x 64,
    8-coil volumes of 3 slices (R = 4 paper mask, rho = 0.05), one in ``train``
    and one in ``val``."""
    from mrimsm.data.prep import PrepOptions, prepare_dataset

    base = tmp_path_factory.mktemp("prepared")
    for i in range(2):
        write_fake_fastmri(base / "raw" / f"vol{i}.h5", "full", num_slices=3, size=64, num_coils=8, seed=10 + i)
    opts = PrepOptions(size=64, noise_rho=0.05, skip_last=0, val_fraction=0.5)
    prepare_dataset(base / "raw", base / "out", opts, on_warning=lambda m: None)
    return base / "out"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test runs with one torch thread: on a shared 2-core machine two
    OpenMP threads contending with other processes made these small tensors
    7-100x slower. The previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
