"""benchmarks/sweep_solver.py: its options, and the brains.py validation set with its noise-free twins."""

import csv

import numpy as np
import pytest

from benchmarks import heldout_sets, sweep_solver


def _exit_code(argv):
    with pytest.raises(SystemExit) as e:
        sweep_solver.main(argv)
    return e.value.code


def test_no_option_that_would_be_ignored(capsys):
    """``--data`` (a prepared directory) is not taken: the sweep simulates its validation slices."""
    assert _exit_code(["--data", "somewhere", "--quiet"]) == 2
    assert "unrecognized arguments: --data" in capsys.readouterr().err


def test_brains_validation_refuses_settings_it_cannot_honour(tmp_path, capsys):
    assert _exit_code(["--val-set", "brains", "--coils", "4", "--work", str(tmp_path), "--quiet"]) == 2
    assert "--val-set brains" in capsys.readouterr().err
    assert _exit_code(["--val-set", "brains", "--pixel", "native", "--work", str(tmp_path), "--quiet"]) == 2


def _fake_brains_raw(calls):
    """A stand-in for :func:`benchmarks.heldout_sets.brains_raw`: two files of the ``val`` set
    (3 + 2 slices of a 32 x 32 disc, 8 coils), the same seeds at every noise (as brains.py)."""
    from mrimsm.data.simulate import simulate_images_file

    yy, xx = np.mgrid[-1:1:32j, -1:1:32j]

    def fake(work, noise, sets, size):
        calls.append((noise, tuple(sets), size))
        out = work / f"noise_{noise:g}"
        for k, n in enumerate((3, 2)):
            f = out / "val" / f"v{k}.h5"
            if not f.is_file():
                f.parent.mkdir(parents=True, exist_ok=True)
                images = [((xx**2 + yy**2 < 0.5 + 0.05 * j) * (1 + 0.3 * xx)).astype(np.float32) for j in range(n)]
                simulate_images_file(f, images, {"acquisition": "AXT1"}, 8, noise, True, seed=40 + k)
        return out

    return fake


def test_brains_validation_runs_against_its_noise_free_twins(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(heldout_sets, "brains_raw", _fake_brains_raw(calls))
    out = tmp_path / "out"
    code = _exit_code(["--val-set", "brains", "--size", "32", "--slices", "4", "--noise", "0.01", "--accels", "4",
                       "--sense", "--grid", "sense_lambda=0.01", "sense_iters=5", "--work", str(tmp_path / "w"),
                       "--out", str(out), "--quiet"])
    assert code in (0, None)
    assert calls == [(0.01, ("val",), 32), (0.0, ("val",), 32)]  # the test noise, then the noise-free twins
    with open(out / "sweep.csv") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    assert len(rows) == 1 and int(rows[0]["slices"]) == 4  # --slices 4 of the 5
    clean, rss = float(rows[0]["psnr_clean_paper"]), float(rows[0]["psnr_paper_mean"])
    assert np.isfinite(clean) and clean != pytest.approx(rss, abs=1e-3)  # the twins, not the noisy RSS
    text = (out / "sweep.md").read_text()
    assert "Validation slices (brains;" in text and "8 coils" in text and "the 4 slices of v0.h5, v1.h5" in text

    # at noise 0 the twins are the files themselves: the two references agree
    out0 = tmp_path / "out0"
    assert _exit_code(["--val-set", "brains", "--size", "32", "--slices", "4", "--noise", "0", "--accels", "4",
                       "--sense", "--grid", "sense_lambda=0.01", "sense_iters=5", "--work", str(tmp_path / "w"),
                       "--out", str(out0), "--quiet"]) in (0, None)
    with open(out0 / "sweep.csv") as fh:
        row = next(csv.DictReader(line for line in fh if not line.startswith("#")))
    assert float(row["psnr_clean_paper"]) == pytest.approx(float(row["psnr_paper_mean"]), abs=1e-6)
