"""benchmarks/README.md is generated from benchmarks/results/ (``python -m benchmarks.readme``) and stays in sync."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks import readme

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_what_the_generator_writes():
    text = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert text == readme.render(ROOT / "benchmarks" / "results"), (
        "benchmarks/README.md is stale or edited by hand: run `make benchmarks-readme`"
    )
    assert text.count("\n") < 250


def test_every_table_has_provenance():
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.csv")):
        table = readme.read_table(path)
        assert "source" in table.provenance or {"date", "command"} <= table.provenance.keys(), path.name


@pytest.fixture
def results(tmp_path):
    out = tmp_path / "results"
    shutil.copytree(ROOT / "benchmarks" / "results", out)
    return out


def test_check_fails_on_a_changed_number(results, tmp_path, capsys):
    out = tmp_path / "README.md"
    assert readme.main(["--results", str(results), "--out", str(out)]) == 0
    assert readme.main(["--results", str(results), "--out", str(out), "--check"]) == 0
    csv_path = results / "real_raw.csv"
    csv_path.write_text(csv_path.read_text().replace("30.89", "31.89", 1))
    assert readme.main(["--results", str(results), "--out", str(out), "--check"]) == 1
    assert "31.89" in readme.render(results) and "31.89" not in out.read_text()


def test_cells_are_copied_as_written_and_pipes_escaped(results):
    for path in results.iterdir():  # the extra table alone (the real README is near the length limit)
        path.unlink()
    (results / "95_extra.md").write_text("## Extra\n\n{{ table extra }}\n")
    (results / "extra.csv").write_text("# date: 2026-12-03\n# command: x\na|b,c\n0.500,1.10\n")
    text = readme.render(results)
    assert "| a\\|b | c |" in text and "| 0.500 | 1.10 |" in text
    assert "Measured 2026-12-03: `x`." in text


@pytest.mark.parametrize(
    "name, body, message",
    [
        ("extra", "a,b\n1,2\n", "needs '# date:'"),
        ("extra", "# date: d\n# command: c\na,b\n1\n", "row 2 has 1 cells"),
        ("extra", "# when: d\na,b\n1,2\n", "provenance lines"),
    ],
)
def test_bad_result_files_are_one_line_errors(results, tmp_path, capsys, name, body, message):
    (results / "95_extra.md").write_text("{{ table extra }}\n")
    (results / f"{name}.csv").write_text(body)
    assert readme.main(["--results", str(results), "--out", str(tmp_path / "R.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "R.md").exists()


def test_unused_and_missing_tables_are_refused(results):
    (results / "orphan.csv").write_text("# source: s\na\n1\n")
    with pytest.raises(readme.ReadmeError, match="orphan.csv"):
        readme.render(results)
    (results / "orphan.csv").unlink()
    (results / "95_extra.md").write_text("{{ table nowhere }}\n")
    with pytest.raises(readme.ReadmeError, match="nowhere.csv"):
        readme.render(results)


def test_real_raw_writes_the_table_the_generator_reads(tmp_path):
    from benchmarks import real_raw as script
    record = {
        "created": "2026-12-03T06:00:00", "accels": [4.0], "methods": ["zero-filled", "cs"], "options": {},
        "rows": [
            {"accel": 4.0, "method": "cs", "achieved": 4.0, "psnr": 30.891, "ssim": 0.60301,
             "psnr_slice": 29.2, "ssim_slice": 0.6031, "seconds_per_slice": 3.264},
            {"accel": 4.0, "method": "zero-filled", "achieved": 4.0, "psnr": 26.88, "ssim": None,
             "psnr_slice": 24.21, "ssim_slice": 0.5072, "seconds_per_slice": 0.15},
            {"accel": 4.0, "method": "_maps", "seconds_per_slice": 2.66},
        ],
    }
    assert script.markdown(record) == (
        "`python -m benchmarks.real_raw --accel 4 --methods zero-filled cs` (2026-12-03; pyqmri VFA brain, "
        "13 coils, 224 x 224, 10 flip angles as 10 slices; reference: RSS of the fully sampled coil images)\n\n"
        "| R | method | PSNR fastMRI | SSIM fastMRI | PSNR paper | SSIM paper | s/slice |\n"
        "|---|---|---|---|---|---|---|\n"
        "| 4 (4.00) | zero-filled | 26.88 | - | 24.21 | 0.5072 | 0.15 |\n"
        "| 4 (4.00) | CS-L1 | 30.89 | 0.6030 | 29.20 | 0.6031 | 3.26 |\n\n"
        "ESPIRiT maps: R = 4 2.66 s/slice.\n"
    )
    path = tmp_path / "real_raw.csv"
    path.write_text(script.readme_csv(record))
    table = readme.read_table(path)
    committed = readme.read_table(ROOT / "benchmarks" / "results" / "real_raw.csv")
    assert table.header == committed.header
    assert table.rows == [["4 (4.00)", "zero-filled", "26.88", "-", "24.21", "0.5072", "0.15"],
                          ["4 (4.00)", "CS-L1", "30.89", "0.6030", "29.20", "0.6031", "3.26"]]
    assert table.provenance["date"] == "2026-12-03"
    assert table.provenance["command"] == "python -m benchmarks.real_raw --accel 4 --methods zero-filled cs"
    assert table.provenance["setup"] == committed.provenance["setup"]


def test_join_writes_one_result_file_from_several_runs(tmp_path, capsys):
    a = tmp_path / "a.csv"
    b = tmp_path / "b.csv"
    a.write_text("# date: 2026-12-01\n# command: run a\n# setup: s1\nprior,x\np64,1\n")
    b.write_text("# date: 2026-12-03\n# command: run b\n# setup: s1\nprior,x\np256,2\np256,3\n")
    out = tmp_path / "joined.csv"
    assert readme.main(["--join", str(out), str(a), str(b)]) == 0
    joined = readme.read_table(out)
    assert joined.provenance == {"date": "2026-12-01; 2026-12-03", "command": "run a; run b", "setup": "s1"}
    assert joined.header == ["prior", "x"] and joined.rows == [["p64", "1"], ["p256", "2"], ["p256", "3"]]
    assert readme.main(["--join", str(out), str(a), str(b), "--setup", "both"]) == 0
    assert readme.read_table(out).provenance["setup"] == "both"
    b.write_text("# date: 2026-12-03\n# command: run b\nprior,y\np256,2\n")
    capsys.readouterr()
    assert readme.main(["--join", str(out), str(a), str(b)]) == 2
    assert "header differs" in capsys.readouterr().err
    assert readme.main(["--join", str(a), str(a)]) == 2  # never overwrite an input
    assert readme.main(["--join", str(out)]) == 2
