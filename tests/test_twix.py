"""mrimsm convert (mrimsm/data/twix.py): line placement, averaging and the refusals on
synthetic lines (no twixtools needed); the twixtools example files (gre.dat, epi.dat from the
cached twixtools 0.24 sdist: no network) for the exact round trip, the image and recon."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mrimsm.data import twix
from mrimsm.errors import MrimsmError

REPO = Path(__file__).resolve().parents[1]


def _protocol(**kw) -> twix.Protocol:
    base = dict(readout_fov_mm=200.0, phase_fov_mm=200.0, thickness_mm=4.0, base_resolution=8, phase_lines=6,
                readout_os=2.0)
    base.update(kw)
    return twix.Protocol(**base)


def _lines(coils=2, samples=16, width=6, slices=1, averages=1, seed=0, **counters):
    rng = np.random.default_rng(seed)
    out = []
    for s in range(slices):
        for a in range(averages):
            for lin in range(width):
                data = (rng.standard_normal((coils, samples)) + 1j * rng.standard_normal((coils, samples)))
                out.append(twix.Line(data=data.astype(np.complex64), lin=lin, sli=s, ave=a,
                                     counters=dict(counters), centre_col=samples // 2, centre_lin=width // 2))
    rng.shuffle(out)  # acquisition order is not line order
    return out


def test_lines_placed_by_their_counters():
    lines = _lines(slices=2)
    scan = twix.assemble(lines, _protocol())
    assert scan.kspace.shape == (2, 2, 16, 6) and scan.recon_size == (8, 6)
    assert scan.fov_mm == (200.0, 200.0) and scan.slices == [(0, 0), (1, 0)]
    for ln in lines:
        np.testing.assert_array_equal(scan.kspace[ln.sli, :, :, ln.lin], ln.data)


def test_centre_line_lands_on_the_middle():
    """Lines counted 1..6 with the centre at line 4 go to columns 0..5 (centre W // 2 = 3)."""
    lines = _lines(width=6)
    for ln in lines:
        ln.lin, ln.centre_lin = ln.lin + 1, 4
    scan = twix.assemble(lines, _protocol())
    for ln in lines:
        np.testing.assert_array_equal(scan.kspace[0, :, :, ln.lin - 1], ln.data)
    for ln in lines:
        ln.centre_lin = 3  # now line 6 falls off the grid
    with pytest.raises(MrimsmError, match="line 6 falls outside the 6 phase-encode lines"):
        twix.assemble(lines, _protocol())
    with pytest.raises(MrimsmError, match="not fully sampled: 1 of 6 lines missing"):
        twix.assemble([ln for ln in lines if ln.lin != 6], _protocol())


def test_averages_are_averaged():
    lines = _lines(averages=3)
    scan = twix.assemble(lines, _protocol())
    assert scan.averaged == 3 and scan.kspace.shape == (1, 2, 16, 6)
    want = np.mean([ln.data for ln in lines if ln.lin == 4], axis=0)
    np.testing.assert_allclose(scan.kspace[0, :, :, 4], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("proto, message", [
    (dict(trajectory=2), "radial trajectory; only Cartesian"),
    (dict(trajectory=4), "spiral trajectory"),
    (dict(dimension=4), "3-D acquisition"),
    (dict(epi_factor=64), "EPI scan"),
    (dict(pat_factor=2), "acceleration 2 .PAT.: not fully sampled"),
    (dict(partial_fourier=4), "partial Fourier"),
    (dict(repetitions=3), "3 repetitions"),
])
def test_protocols_refused_in_one_line(proto, message):
    with pytest.raises(MrimsmError, match=message) as exc:
        twix.assemble(_lines(), _protocol(**proto), "scan.dat")
    assert "\n" not in str(exc.value) and str(exc.value).startswith("scan.dat: ")


def test_lines_refused_in_one_line():
    lines = _lines() + _lines(seed=1, Rep=1)
    with pytest.raises(MrimsmError, match="2 repetitions .Rep counter."):
        twix.assemble(lines, _protocol())
    lines = _lines()
    lines[0].reflect = True
    with pytest.raises(MrimsmError, match="reflected"):
        twix.assemble(lines, _protocol())
    lines = _lines()
    for ln in lines:
        ln.centre_col = 5
    with pytest.raises(MrimsmError, match="asymmetric echo"):
        twix.assemble(lines, _protocol())
    lines = _lines()
    with pytest.raises(MrimsmError, match="acquired twice"):
        twix.assemble(lines + lines[:1], _protocol())


def test_missing_twixtools_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "twixtools", None)  # import fails
    (tmp_path / "scan.dat").write_bytes(b"\0" * 64)
    with pytest.raises(MrimsmError, match=r"needs twixtools: pip install mrimsm\[twix\]"):
        twix.read_twix(tmp_path / "scan.dat")


# -- the twixtools example data --------------------------------------------------------------

SDIST = Path(os.environ.get("MRIMSM_CACHE", Path.home() / ".cache" / "mrimsm")) / "downloads" / "twixtools-0.24.tar.gz"
HAVE_TWIXTOOLS = importlib.util.find_spec("twixtools") is not None
needs_examples = [
    pytest.mark.skipif(not HAVE_TWIXTOOLS, reason="twixtools not installed (pip install mrimsm[twix])"),
    pytest.mark.skipif(not SDIST.is_file(), reason=f"{SDIST} not downloaded (pip download --no-deps --no-binary "
                                                   "twixtools twixtools==0.24 -d ~/.cache/mrimsm/downloads)"),
]


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    out = tmp_path_factory.mktemp("twix")
    with tarfile.open(SDIST) as t:
        for name in ("gre.dat", "epi.dat"):
            (out / name).write_bytes(t.extractfile(f"twixtools-0.24/example_data/{name}").read())
    return out


def _env() -> dict:
    spec = importlib.util.find_spec("twixtools")
    extra = str(Path(spec.submodule_search_locations[0]).parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), extra]), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def gre_h5(examples):
    out = examples / "gre.h5"
    res = subprocess.run([sys.executable, "-m", "mrimsm", "convert", str(examples / "gre.dat"), "-o", str(out)],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr
    assert "kspace 1 x 2 x 320 x 160" in res.stdout and "field of view 200 x 200 mm" in res.stdout
    return out


@needs_examples[0]
@needs_examples[1]
def test_gre_round_trip_is_exact(examples, gre_h5):
    import twixtools

    from mrimsm.data.fastmri_io import read_multicoil

    f = read_multicoil(gre_h5)
    assert f.kspace.shape == (1, 2, 320, 160)  # readout oversampling kept: 2 x 160
    mdbs = [m for m in twixtools.read_twix(str(examples / "gre.dat"), verbose=False)[-1]["mdb"] if m.is_image_scan()]
    assert len(mdbs) == 160
    for m in mdbs:
        np.testing.assert_array_equal(f.kspace[m.mdh.Counter.Sli, :, :, m.mdh.Counter.Lin], m.data)
    assert f.pixel_mm == (1.25, 1.25) and f.recon_size == (160, 160)
    ref = f.reconstruction_rss[0]
    assert ref.shape == (160, 160) and ref.max() > 0
    ys, xs = np.nonzero(ref > 0.3 * ref.max())
    assert abs(ys.mean() - 80) < 15 and abs(xs.mean() - 80) < 15  # the phantom in the middle
    assert ref[60:100, 60:100].mean() > 3 * np.concatenate([ref[:6, :6], ref[:6, -6:]]).mean()
    assert b"<x>200.0</x>" in f.ismrmrd_header and b"<z>4.0</z>" in f.ismrmrd_header


@needs_examples[0]
@needs_examples[1]
def test_epi_is_refused_in_one_line(examples, tmp_path):
    res = subprocess.run([sys.executable, "-m", "mrimsm", "convert", str(examples / "epi.dat"), "-o",
                          str(tmp_path / "epi.h5")], capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 2 and not (tmp_path / "epi.h5").exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "EPI scan" in lines[0], res.stderr


@needs_examples[0]
@needs_examples[1]
def test_existing_output_needs_overwrite(examples, gre_h5):
    with pytest.raises(MrimsmError, match="--overwrite"):
        twix.convert(examples / "gre.dat", gre_h5)


@needs_examples[0]
@needs_examples[1]
def test_recon_runs_on_the_converted_file(gre_h5, tmp_path):
    from mrimsm import recon

    rep = recon.reconstruct_file(gre_h5, tmp_path, ["zero-filled", "sense", "cs"], accel=4)
    assert [r.method for r in rep.results] == ["zero-filled", "sense", "cs"]
    for r in rep.results:
        assert r.reconstruction.shape == (1, 160, 160) and np.isfinite(r.metrics["psnr"])
        assert r.metrics["psnr"] > 12


@needs_examples[0]
def test_not_a_twix_file_is_one_line(tmp_path):
    bad = tmp_path / "noise.dat"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    res = subprocess.run([sys.executable, "-m", "mrimsm", "convert", str(bad), "-o", str(tmp_path / "x.h5")],
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 2 and not (tmp_path / "x.h5").exists()
    assert res.stdout == "" and res.stderr.count("\n") == 1 and "not a readable Siemens TWIX file" in res.stderr
