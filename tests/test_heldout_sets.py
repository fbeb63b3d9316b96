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


def test_dipy_sets_skip_with_a_note_or_fail_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(heldout_sets, "_dipy_found", lambda dipy: False)
    with pytest.raises(SystemExit) as e:
        heldout_sets.main(["--size", "32", "--noise", "0.01", "--accels", "4", "--msm", "--sets", "dipy",
                           "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--quiet"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --sets dipy needs --dipy")
    assert heldout_sets.argv_names_sets(["--sets", "mni"]) and not heldout_sets.argv_names_sets(["--noise", "0"])
