"""The edge diagnostics of benchmarks/calibration.py."""

import numpy as np

from benchmarks.calibration import EDGE_FRACTION, edge_pixels, edge_share


def _disc(n: int = 64, r: float = 20.0) -> np.ndarray:
    y, x = np.mgrid[:n, :n] - n / 2 + 0.5
    return (np.hypot(y, x) < r).astype(np.float64)


def test_edge_pixels_are_the_rim_and_the_stated_fraction():
    ref = _disc()
    sup = np.ones_like(ref, dtype=bool)
    edges = edge_pixels(ref, sup, 0.03)  # the rim holds about 6 % of the pixels
    assert abs(edges.mean() - 0.03) < 0.002
    y, x = np.nonzero(edges)
    radius = np.hypot(y - 31.5, x - 31.5)
    assert np.all(np.abs(radius - 20) < 3)  # on the disc's rim, nowhere else


def test_edge_share_tells_edge_errors_from_uniform_ones():
    rng = np.random.default_rng(0)
    ref = _disc() + 0.5 * _disc(r=10)
    sup = ref > 0
    edges = edge_pixels(ref, sup)
    uniform = rng.normal(size=ref.shape)
    assert abs(edge_share(uniform, ref, sup) - edges[sup].mean()) < 0.05
    on_edges = np.where(edges, 1.0, 0.05)
    assert edge_share(on_edges, ref, sup) > 0.9
    assert edge_share(np.zeros_like(ref), ref, sup) == 0.0
    assert 0 < EDGE_FRACTION < 1


def test_neighbour_spearman_is_high_for_errors_of_a_local_size_and_zero_for_uniform_noise():
    from benchmarks.calibration import neighbour_error_spearman

    rng = np.random.default_rng(1)
    sup = np.ones((64, 64), dtype=bool)
    uniform = [rng.normal(size=(64, 64)) for _ in range(3)]
    assert abs(neighbour_error_spearman(uniform, [sup] * 3)) < 0.05
    scale = np.where(np.arange(64)[None, :] < 32, 10.0, 0.5) * np.ones((64, 64))  # large errors on one half
    local = [scale * rng.normal(size=(64, 64)) for _ in range(3)]
    assert neighbour_error_spearman(local, [sup] * 3) > 0.4
    # the pixel's own error is left out: a single spike has no neighbours that know it
    spike = np.zeros((64, 64))
    spike[32, 32] = 1.0
    assert neighbour_error_spearman([spike + 1e-6 * rng.normal(size=(64, 64))], [sup]) < 0.05


def test_benchmark_refusals_are_one_line(tmp_path, capsys):
    import pytest

    from benchmarks.calibration import main

    with pytest.raises(SystemExit) as exc:
        main(["--install", "--calibration", str(tmp_path / "c.json"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "cannot go with --calibration" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--test-sets", "dipy", "--dipy", str(tmp_path / "absent.whl"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error:") and "absent.whl" in err and len(err.splitlines()) == 1
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        main(["--calibration", str(tmp_path / "c.json"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "not a usable calibration" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_readme_table_pairs_the_accelerations_per_set_and_noise():
    from benchmarks.calibration import README_COLUMNS, readme_table
    from benchmarks.readme import read_table

    def row(set_, noise, accel, cover):
        return {"set": set_, "noise": noise, "accel": accel, "test_slices": 3, "bound90": cover,
                "spearman": 0.02, "neighbour_spearman": 0.2}

    rows = [row("mni", 0.002, 4.0, 0.891), row("mni", 0.002, 6.0, 0.902), row("mni", 0.01, 4.0, 0.88),
            row("dipy", 0.01, 4.0, 0.85)]
    path = __import__("pathlib").Path(__import__("tempfile").mkdtemp()) / "calibration.csv"
    path.write_text(readme_table(rows, "p.pt", "python -m benchmarks.calibration", "setup"))
    table = read_table(path)
    assert table.header[:3] == ["prior", "set", "slices"] and len(table.header) == 3 + 2 * len(README_COLUMNS)
    assert table.header[3:5] == ["90 % bound covers, noise 0.002 (R 4 / 6)", "90 % bound covers, noise 0.01 (R 4 / 6)"]
    assert table.rows[0][:5] == ["p.pt", "MNI152", "3", "89.1% / 90.2%", "88.0% / -"]
    assert table.rows[1][1:5] == ["dipy T1", "3", "- / -", "85.0% / -"]
