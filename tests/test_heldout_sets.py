"""benchmarks/heldout_sets.py: the MNI and dipy sets, the slice cap, the noise-free twins."""

import csv

import h5py
import numpy as np
import pytest

from benchmarks import heldout_sets


def test_spread_is_even_and_deterministic():
    assert heldout_sets.spread(8, None) == list(range(8))
    assert heldout_sets.spread(8, 10) == list(range(8))
    two = heldout_sets.spread(8, 2)
    assert len(two) == 2 and two == heldout_sets.spread(8, 2)
    assert two[0] > 0 and two[-1] < 7  # spread inside the set, not its first slices
    assert heldout_sets.spread(30, 3) == [7, 14, 22]
    for count in range(1, 13):  # exactly `keep` distinct indices, never the first ones alone
        for keep in range(1, count):
            got = heldout_sets.spread(count, keep)
            assert len(set(got)) == keep and got == sorted(got) and 0 <= got[0] and got[-1] < count
            assert got[-1] >= (count // 2 if keep > 1 else (count - 1) // 2)
    assert heldout_sets.spread(3, 2) == [0, 2]  # the b0 set's 3 slices at --slices 2: both ends, not one twice


def test_capped_files_keep_the_chosen_slices_of_every_array(tmp_path):
    files = []
    for k, n in enumerate((3, 5)):
        f = tmp_path / f"v{k}.h5"
        with h5py.File(f, "w") as h:
            h["kspace"] = np.arange(n * 2 * 4 * 4, dtype=np.complex64).reshape(n, 2, 4, 4) + 100 * k
            h["reconstruction_rss"] = np.arange(n * 16, dtype=np.float32).reshape(n, 4, 4) + 100 * k
            h["ismrmrd_header"] = np.bytes_(b"<xml/>")
            h.attrs["acquisition"] = "AXT1"
        files.append(f)
    out = heldout_sets.capped_files(files, 2, tmp_path / "cap")
    chosen = heldout_sets.spread(8, 2)
    got = []
    for f in out:
        with h5py.File(f, "r") as h:
            assert h.attrs["acquisition"] == "AXT1" and h["ismrmrd_header"][()] == b"<xml/>"
            got += [row for row in h["reconstruction_rss"][()]]
    want = []
    for f in files:
        with h5py.File(f, "r") as h:
            want += list(h["reconstruction_rss"][()])
    assert len(got) == 2
    np.testing.assert_array_equal(np.stack(got), np.stack([want[i] for i in chosen]))
    assert heldout_sets.capped_files(files, None, tmp_path / "none") == files


def _rows(path):
    with open(path) as fh:
        return list(csv.DictReader(line for line in fh if not line.startswith("#")))


def test_mni_set_at_noise_zero_matches_its_noise_free_twin(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        heldout_sets.main(["--size", "32", "--noise", "0", "0.01", "--accels", "4", "--slices", "2", "--msm",
                           "--sets", "mni", "--work", str(tmp_path / "w"), "--out", str(out), "--quiet"])
    assert e.value.code in (0, None)
    rows = _rows(out / "heldout_sets.csv")
    assert {r["set"] for r in rows} == {"mni"} and len(rows) == 2 * 3
    for r in rows:
        if float(r["noise"]) == 0.0:  # the noise-free twin is the RSS reference itself
            assert float(r["psnr_clean_paper"]) == pytest.approx(float(r["psnr_paper_mean"]), abs=1e-6)
    zf = {float(r["noise"]): float(r["psnr_clean_paper"]) for r in rows if r["label"] == "zero-filled"}
    assert zf[0.0] > zf[0.01]  # the test noise costs PSNR against the noise-free object
    from benchmarks.readme import read_table

    table = read_table(out / "heldout_sets_readme.csv")
    assert table.header == ["set", "slices", "R 4, noise 0", "R 4, noise 0.01"]
    cs = {float(r["noise"]): float(r["psnr_clean_paper"]) for r in rows if r["label"] == "CS-L1"}
    assert table.rows == [["mni", "2", f"{cs[0.0]:.2f} / - / -", f"{cs[0.01]:.2f} / - / -"]]


def _fake_dipy(tmp_path):
    """A wheel holding the two dipy members (a 64 x 64 T1 disc, three 32 x 32 b0 slices) and
    the T1 ``.npy`` alone."""
    import gzip
    import zipfile

    import nibabel as nib

    from benchmarks.prior256 import DIPY_B0_MEMBER, DIPY_MEMBER

    yy, xx = np.mgrid[-1:1:64j, -1:1:64j]
    t1 = ((xx**2 + yy**2 < 0.6) * (1.0 + 0.5 * xx)).astype(np.float32)
    npy = tmp_path / "t1_coronal_slice.npy"
    np.save(npy, t1)
    b0 = np.stack([np.asarray(t1[::2, ::2]) * (k + 1) for k in range(3)], axis=-1) * 1000
    whl = tmp_path / "dipy-0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.write(npy, DIPY_MEMBER)
        z.writestr(DIPY_B0_MEMBER, gzip.compress(nib.Nifti1Image(b0.astype(np.float32), np.eye(4)).to_bytes()))
    return whl, npy


def _run(tmp_path, *extra):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        heldout_sets.main(["--size", "32", "--accels", "4", "--msm", "--work", str(tmp_path / "w"),
                           "--out", str(out), "--quiet", *extra])
    return e.value.code, out


def test_dipy_sets_from_a_wheel_match_their_noise_free_twins_at_noise_zero(tmp_path):
    whl, _ = _fake_dipy(tmp_path)
    code, out = _run(tmp_path, "--sets", "dipy", "dipyb0", "--dipy", str(whl), "--noise", "0", "0.01",
                     "--slices", "2")
    assert code in (0, None)
    rows = _rows(out / "heldout_sets.csv")
    assert {r["set"] for r in rows} == {"dipy", "dipyb0"} and len(rows) == 2 * 2 * 3
    slices = {r["set"]: int(r["slices"]) for r in rows}
    assert slices == {"dipy": 1, "dipyb0": 2}  # --slices 2 keeps 2 of the 3 b0 slices
    for r in rows:
        assert np.isfinite(float(r["psnr_clean_paper"])) and np.isfinite(float(r["psnr_clean_fastmri"]))
        if float(r["noise"]) == 0.0:
            assert float(r["psnr_clean_paper"]) == pytest.approx(float(r["psnr_paper_mean"]), abs=1e-6)
    for name in ("dipy", "dipyb0"):
        zf = {float(r["noise"]): float(r["psnr_clean_paper"]) for r in rows
              if r["label"] == "zero-filled" and r["set"] == name}
        assert zf[0.0] > zf[0.01]
        noisy, clean = (tmp_path / "w" / "size_32" / f"noise_{n}" / name / f"{name}.h5" for n in ("0.01", "0"))
        with h5py.File(noisy, "r") as a, h5py.File(clean, "r") as b:
            assert a["kspace"].shape == b["kspace"].shape == ((1 if name == "dipy" else 3), 8, 64, 32)
            twin = b["reconstruction_rss"][()]
            assert twin.max() > 0.5 and not np.allclose(a["reconstruction_rss"][()], twin)


def test_dipy_sets_skip_with_a_note_or_fail_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(heldout_sets, "dipy_images", lambda dipy, sets: {})
    code, _ = _run(tmp_path, "--noise", "0.01", "--sets", "dipy")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --sets dipy needs --dipy")
    assert not (tmp_path / "out").exists()


def test_a_dipy_set_not_found_is_left_out_with_a_note_by_default(tmp_path, monkeypatch, capsys):
    _, npy = _fake_dipy(tmp_path)
    monkeypatch.setattr(heldout_sets, "SETS", heldout_sets.DIPY_SETS)  # the default sets, without downloads
    code, out = _run(tmp_path, "--noise", "0.01", "--dipy", str(npy))
    assert code in (0, None)
    err = capsys.readouterr().err
    assert "note: no dipy found (pass --dipy WHEEL): the sets dipyb0 are left out" in err
    assert {r["set"] for r in _rows(out / "heldout_sets.csv")} == {"dipy"}
    code, _ = _run(tmp_path, "--noise", "0.01", "--dipy", str(npy), "--sets", "dipy", "dipyb0")
    assert code == 2  # the .npy holds no b0 slices, and --sets asks for them
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --sets dipyb0 needs --dipy")
    code, _ = _run(tmp_path, "--noise", "0.01", "--dipy", str(tmp_path / "nothing.whl"), "--sets", "dipy")
    assert code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --dipy ")


def test_ssdu_checkpoints_side_by_side(tmp_path):
    """``--ssdu shipped CKPT``: a row each, the checkpoint's own weights (the 256 model on 64 x 64
    slices differs from the 64 one that ``shipped`` picks)."""
    from mrimsm.assets import asset_path

    other = str(asset_path("default_ssdu256.pt"))
    code, out = _run(tmp_path, "--sets", "mni", "--noise", "0.01", "--slices", "1", "--size", "64",
                     "--ssdu", "shipped", other)
    assert code in (0, None)
    got = {r["label"]: float(r["psnr_clean_paper"]) for r in _rows(out / "heldout_sets.csv")}
    assert {"SSDU", f"SSDU {other}"} <= set(got) and got["SSDU"] != pytest.approx(got[f"SSDU {other}"], abs=1e-3)
    code, _ = _run(tmp_path, "--sets", "mni", "--noise", "0.01", "--slices", "1", "--ssdu", other, other)
    assert code == 2  # the same checkpoint twice: one line, no run
