"""`mrimsm recon scan.h5 -o out.nii.gz`: NIfTI output (mrimsm.recon.outputs.write_nifti)."""

from __future__ import annotations

import json

import h5py
import nibabel as nib
import numpy as np
import pytest

from mrimsm.cli.main import main
from mrimsm.data.fastmri_io import pixel_size_from_header, slice_thickness_from_header
from mrimsm.data.simulate import ismrmrd_header_xml, make_sample_file, write_fastmri_file
from mrimsm.recon.outputs import RECORD_ATTR, is_mrimsm_output, nifti_files, write_result

FAST = ["--steps", "2", "--w", "1", "--samples", "2", "--t0", "0.3", "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One MSM run (2 samples) of a 2-slice 64 x 64 scan, written as HDF5 and as NIfTI."""
    d = tmp_path_factory.mktemp("nifti")
    scan = make_sample_file(d / "scan.h5", num_slices=2, seed=5)
    for out in ("out.h5", "out.nii.gz"):
        assert main(["recon", str(scan), "-R", "4", "-m", "msm", "-o", str(d / out), *FAST]) == 0
    return d, scan


def _data(path):
    img = nib.load(str(path))
    return img, np.asarray(img.dataobj)


def test_nifti_equals_the_hdf5_output(runs):
    d, scan = runs
    with h5py.File(scan) as f:
        header = f["ismrmrd_header"][()]
    with h5py.File(d / "out.h5") as f:
        rec, unc, record = f["reconstruction"][()], f["uncertainty"][()], json.loads(f.attrs[RECORD_ATTR])
    img, data = _data(d / "out.nii.gz")
    assert data.shape == (rec.shape[1], rec.shape[2], rec.shape[0]) == (64, 64, 2)
    assert data.dtype == np.float32 and img.get_data_dtype() == np.float32
    rows, cols = pixel_size_from_header(header)
    thick = slice_thickness_from_header(header)
    assert thick == 5.0
    np.testing.assert_allclose(img.header.get_zooms(), (rows, cols, thick), rtol=1e-6)
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), (rows, cols, thick), rtol=1e-6)
    np.testing.assert_array_equal(data.transpose(2, 0, 1), rec)
    uimg, udata = _data(d / "out.uncertainty.nii.gz")
    np.testing.assert_array_equal(udata.transpose(2, 0, 1), unc)
    np.testing.assert_allclose(uimg.header.get_zooms(), img.header.get_zooms())
    side = json.loads((d / "out.json").read_text())
    assert side[RECORD_ATTR] == record
    assert side["files"] == {"reconstruction": "out.nii.gz", "uncertainty": "out.uncertainty.nii.gz"}
    assert side["attrs"]["method"] == "msm" and "psnr" in side["attrs"] and side["voxel_mm_assumed"] == []
    assert img.header["descrip"].item().startswith(b"mrimsm ")
    assert not (d / "out.error_bound.nii.gz").exists()
    assert all(is_mrimsm_output(p) for p in nifti_files(d / "out.nii.gz").values() if p.exists())


def test_rerun_replaces_own_outputs_and_refuses_others(runs, capsys, tmp_path):
    d, scan = runs
    out = tmp_path / "r.nii.gz"
    assert main(["recon", str(scan), "-R", "4", "-m", "zero-filled", "-o", str(out), "-q"]) == 0
    cap = capsys.readouterr()
    assert f"wrote {out}" in cap.out and "note: r.nii.gz: its record in r.json" in cap.err
    assert main(["recon", str(scan), "-R", "4", "-m", "zero-filled", "-o", str(out), "-q"]) == 0  # its own: fine
    (tmp_path / "r.json").write_text("{}")  # a file of someone else
    assert main(["recon", str(scan), "-R", "4", "-m", "zero-filled", "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: output ") and "r.json exists and is not a file mrimsm wrote" in err[-1]
    assert (tmp_path / "r.json").read_text() == "{}"
    assert main(["recon", str(scan), "-R", "4", "-m", "zero-filled", "-o", str(out), "-q", "--overwrite"]) == 0
    other = tmp_path / "other.nii"
    other.write_bytes(b"not a nifti")
    assert main(["recon", str(scan), "-R", "4", "-m", "zero-filled", "-o", str(other), "-q"]) == 2
    assert "other.nii exists and is not a reconstruction mrimsm wrote" in capsys.readouterr().err
    assert main(["recon", str(scan), "-R", "4", "-m", "zero-filled", "-m", "sense", "-o", str(tmp_path / "two.nii.gz")]) == 2
    assert "with several --method, -o must be a directory" in capsys.readouterr().err


def test_unknown_slice_thickness_is_1mm_with_a_note(tmp_path, capsys):
    scan = make_sample_file(tmp_path / "s.h5", num_slices=1, seed=1)
    with h5py.File(scan) as f:
        k, ref = f["kspace"][()], f["reconstruction_rss"][()]
    header = ismrmrd_header_xml(k.shape[-2:], ref.shape[-2:], k.shape[1], fov_mm=(200.0, 100.0))
    header = header.replace(b"<z>5.0</z>", b"")
    scan = write_fastmri_file(tmp_path / "noz.h5", k, ref, header=header)
    out = tmp_path / "noz.nii"
    assert main(["recon", str(scan), "-R", "4", "-m", "sense", "-o", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert ("note: noz.h5: the ISMRMRD header states no slice thickness (field of view z); noz.nii uses 1 mm there"
            in err.splitlines())
    img, data = _data(out)
    assert data.shape == (ref.shape[1], ref.shape[2], 1)
    np.testing.assert_allclose(img.header.get_zooms(), (200.0 / ref.shape[1], 100.0 / k.shape[-1], 1.0), rtol=1e-6)
    assert json.loads((tmp_path / "noz.json").read_text())["voxel_mm_assumed"] == ["slice thickness (field of view z)"]


def test_error_bound_file_and_stale_maps(tmp_path):
    from mrimsm.recon import prepare_volume, run_method

    scan = make_sample_file(tmp_path / "s.h5", num_slices=1, seed=2)
    vol = prepare_volume(scan, 4, 0)
    res = run_method(vol, "zero-filled")
    res.uncertainty = np.full_like(res.reconstruction, 0.5)
    res.error_bound = np.full_like(res.reconstruction, 2.0)
    res.bound_info = {"level": 0.9, "scale": 4.0}
    out = tmp_path / "b.nii.gz"
    write_result(vol, res, out, record={"method": "zero-filled"})
    files = nifti_files(out)
    _, bound = _data(files["error_bound"])
    assert bound.shape == (64, 64, 1) and np.all(bound == 2.0)
    assert json.loads(files["record"].read_text())["attrs"]["error_bound_calibration"]["level"] == 0.9
    res.uncertainty = res.error_bound = None
    res.bound_info = {}
    write_result(vol, res, out, record={"method": "zero-filled"})
    assert not files["error_bound"].exists() and not files["uncertainty"].exists()  # no stale maps
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "b.nii.gz", "s.h5"]
