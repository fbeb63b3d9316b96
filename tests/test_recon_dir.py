"""`mrimsm recon` at scale: directory input, torchrun rank splitting, one-line errors for
numeric options, msm option pass-through; and the benchmark scripts' shared code."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mrimsm.cli.main import main
from mrimsm import recon
from mrimsm.data.fastmri_io import crop_to_reconstruction
from mrimsm.data.simulate import birdcage_coil_maps
from mrimsm.errors import MrimsmError

from conftest import write_fake_fastmri

REPO = Path(__file__).resolve().parents[1]


def _true_maps(kspace, mask):
    """The simulator's birdcage maps on the readout-cropped grid (replaces ESPIRiT)."""
    s, c, h, w = kspace.shape
    maps = birdcage_coil_maps(c, (2 * h, w), object_shape=(h, w))
    return np.repeat(crop_to_reconstruction(maps, (h, w))[None], s, 0)


def _scan_dir(d: Path, n: int = 3, bad: tuple = (), size: int = 32, coils: int = 4) -> Path:
    """``n`` small fully sampled files ``f0.h5 ...``; those in ``bad`` are truncated."""
    for i in range(n):
        write_fake_fastmri(d / f"f{i}.h5", "truncated" if i in bad else "full", num_slices=1, size=size,
                           num_coils=coils, seed=i)
    return d


def _files(d: Path) -> list:
    return sorted(p.relative_to(d) for p in d.rglob("*"))


def _recon(path: Path) -> np.ndarray:
    with h5py.File(path) as f:
        return f["reconstruction"][()]


@pytest.fixture
def probe(monkeypatch):
    """A registered method ``probe`` (zero-filled) that records the options it was built with."""
    from mrimsm.baselines.classical import zero_filled

    seen: list = []

    class Probe(recon.MethodBase):
        def __init__(self, options):
            seen.append(dict(options))

        def reconstruct(self, batch):
            return recon.MethodOutput(zero_filled(batch.kspace, batch.mask, batch.maps))

    monkeypatch.setitem(recon.METHODS, "probe", recon.MethodSpec("probe", Probe))
    return seen


@pytest.fixture(scope="module")
def tiny_msm(tmp_path_factory) -> Path:
    """An untrained (random but non-zero) 32 x 32 MSM checkpoint in the trainer's format."""
    from mrimsm.checkpoint import save_checkpoint
    from mrimsm.config import load_config
    from mrimsm.diffusion.denoiser import build_denoiser

    cfg = load_config(REPO / "configs" / "tiny.yaml").to_dict()
    cfg["model"].update(model_channels=8, channel_mult=[1, 2], attention_resolutions=[], num_head_channels=8)
    torch.manual_seed(0)
    den = build_denoiser(cfg, 2, (32, 32))
    for p in den.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    meta = {"operator": "MultiCoilMRI", "image_shape": [32, 32], "num_coils": 4, "channels": 2, "complex": True,
            "rho": 0.0, "mask": {"kind": "paper", "accel": 4.0, "center_lines": 3}, "train_masks": None,
            "reference_maps": None, "schedule": {"num_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}}
    state = den.state_dict()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_msm.pt", method="msm", step=0, config=cfg,
                           meta=meta, model=state, ema=state)


# -- option parsing ------------------------------------------------------------------


def test_option_values_are_checked_by_the_settings_fields():
    """The library checks a direct caller's option values with the fields the flags are declared
    from (mrimsm.solver_settings): typed values pass, bad ones are one line naming the flag."""
    from mrimsm.recon.classical import CSRecon
    from mrimsm.settings import check_field
    from mrimsm.solver_settings import PosteriorSettings, ReconSettings

    assert (CSRecon({"cs_lambda": 0, "cs_iters": 7}).lamda, CSRecon({"cs_iters": 7}).iters) == (0.0, 7)
    assert check_field(PosteriorSettings, "dc_step", 2, "--dc-step") == 2.0
    cases = [(PosteriorSettings, "steps", "abc"), (PosteriorSettings, "steps", 1.5), (PosteriorSettings, "w", 0),
             (PosteriorSettings, "samples", -1), (ReconSettings, "seed", -3), (ReconSettings, "center_fraction", 0),
             (ReconSettings, "center_fraction", 1.5), (PosteriorSettings, "eta", float("nan")),
             (ReconSettings, "batch_slices", 0)]
    for cls, key, bad in cases:
        flag = "--" + key.replace("_", "-")
        with pytest.raises(MrimsmError, match=flag):
            check_field(cls, key, bad, flag)
    for options, flag in [({"cs_lambda": float("inf")}, "--cs-lambda"), ({"cs_iters": ""}, "--cs-iters")]:
        with pytest.raises(MrimsmError, match=flag):
            CSRecon(options)
    with pytest.raises(MrimsmError, match="--batch-slices"):
        recon.ReconOptions(options={"batch_slices": 0}).resolved()


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--steps", "abc"], "--steps"),
        (["--w", "0"], "--w"),
        (["--seed", "x"], "--seed"),
        (["--cs-iters", "1.5"], "--cs-iters"),
        (["--center-fraction", "2"], "--center-fraction"),
        (["--eta", "fast"], "--eta"),
        (["--samples", ""], "--samples"),
        (["--dc-step", "1e999"], "--dc-step"),
        (["--batch-slices", "-2"], "--batch-slices"),
        (["--device", "tpu"], "--device"),
        (["--threads", "two"], "--threads"),
        (["-m", "msm", "--eta", "5"], "eta"),
        (["-m", "msm", "--settings", "missing.yaml"], "missing.yaml"),
    ],
)
def test_cli_numeric_and_msm_errors_are_one_line(tmp_path, capsys, monkeypatch, args, expect):
    d = _scan_dir(tmp_path / "in", n=1)
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    if "-m" not in args:
        args = args + ["-m", "zero-filled"]
    for target in (d / "f0.h5", d):  # a file and a directory
        rc = main(["recon", str(target), "--accel", "4", "-o", str(tmp_path / "out")] + args)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2
        assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert _files(tmp_path) == before


def test_cli_passes_msm_options_through(tmp_path, capsys, monkeypatch, probe):
    d = _scan_dir(tmp_path / "in", n=1)
    settings = tmp_path / "s.yaml"
    settings.write_text("posterior:\n  steps: 3\n")
    monkeypatch.chdir(tmp_path)
    rc = main(["recon", str(d / "f0.h5"), "--accel", "4", "-m", "probe", "-o", "o.h5", "--settings", str(settings),
               "--eta", "0.25", "--dc-step", "2", "--steps", "7", "--w", "2", "--samples", "3", "--seed", "5",
               "--batch-slices", "2", "-q"])
    assert rc == 0, capsys.readouterr().err
    (opts,) = probe
    assert opts["settings"] == settings and opts["eta"] == 0.25 and opts["dc_step"] == 2.0
    assert (opts["steps"], opts["w"], opts["samples"], opts["seed"], opts["batch_slices"]) == (7, 2, 3, 5, 2)
    assert opts["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_resolve_device():
    from mrimsm.utils import resolve_device

    assert resolve_device("cpu", 3) == torch.device("cpu")
    assert resolve_device(None) == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", " "):
        with pytest.raises(MrimsmError, match="--device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        for name in ("cuda", "cuda:0"):
            with pytest.raises(MrimsmError, match="no CUDA"):
                resolve_device(name)


def test_batch_slices_option_sets_the_method_batches(tmp_path, monkeypatch):
    sizes = []

    class Sizes(recon.MethodBase):
        batch_slices = 8

        def __init__(self, options):
            pass

        def reconstruct(self, batch):
            sizes.append(batch.kspace.shape[0])
            return recon.MethodOutput(batch.kspace[:, 0].clone())

    monkeypatch.setitem(recon.METHODS, "sizes", recon.MethodSpec("sizes", Sizes))
    path = write_fake_fastmri(tmp_path / "a.h5", "full", num_slices=3, size=32, num_coils=2)
    vol = recon.prepare_volume(path, 4, maps_fn=_true_maps)
    recon.run_method(vol, "sizes")
    recon.run_method(vol, "sizes", {"batch_slices": 2})
    assert sizes == [3, 2, 1]


# -- directories and ranks ---------------------------------------------------------------


def test_rank_helpers():
    files = [Path(f"f{i}.h5") for i in range(5)]
    parts = [recon.files_for_rank(files, r, 2) for r in range(2)]
    assert parts == [files[0::2], files[1::2]]
    assert recon.rank_info({}) == (0, 1, 0)
    assert recon.rank_info({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    for env in ({"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "x"}):
        with pytest.raises(MrimsmError):
            recon.rank_info(env)


def test_training_reads_torchrun_environment_with_the_same_parser(monkeypatch):
    from mrimsm import distributed

    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(MrimsmError, match="WORLD_SIZE"):
        distributed.init("cpu")


def test_set_threads():
    from mrimsm.utils import set_threads

    before = torch.get_num_threads()
    set_threads(None)
    assert torch.get_num_threads() == before
    with pytest.raises(MrimsmError, match="--threads"):
        set_threads(0)


def test_directory_matches_single_file_and_splits_across_ranks(tmp_path):
    d = _scan_dir(tmp_path / "in", n=3)
    (d / ".hidden.h5").write_text("an unfinished temporary file")
    (d / "notes.txt").write_text("not an input")
    out = tmp_path / "out"
    reports = [
        recon.reconstruct_directory(d, out, ["zero-filled", "cs"], accel=4, seed=3, maps_fn=_true_maps,
                                    rank=r, world_size=2, options={"cs_iters": 5})
        for r in range(2)
    ]
    assert [[o.path.name for o in rep.outcomes] for rep in reports] == [["f0.h5", "f2.h5"], ["f1.h5"]]
    assert all(o.status == "done" and o.num_slices == 1 for rep in reports for o in rep.outcomes)
    want = {Path(m) / f"f{i}.h5" for m in ("cs", "zero-filled") for i in range(3)} | {Path("cs"), Path("zero-filled")}
    assert set(_files(out)) == want
    single = recon.reconstruct_file(d / "f1.h5", tmp_path / "single", ["zero-filled", "cs"], accel=4, seed=3,
                                    maps_fn=_true_maps, options={"cs_iters": 5})
    for m in ("zero-filled", "cs"):
        np.testing.assert_array_equal(_recon(out / m / "f1.h5"), _recon(single.outputs[m]))
    assert "psnr" in reports[0].outcomes[0].metrics["cs"]


def test_directory_skips_done_files_and_reports_bad_ones(tmp_path):
    d = _scan_dir(tmp_path / "in", n=3, bad=(1,))
    out = tmp_path / "out"
    seen = []
    rep = recon.reconstruct_directory(d, out, ["zero-filled"], accel=4, maps_fn=_true_maps, on_file=seen.append)
    assert [o.status for o in seen] == ["done", "failed", "done"] and seen == rep.outcomes
    assert "f1.h5" in rep.failed[0].message and "\n" not in rep.failed[0].message
    assert _files(out) == [Path("f0.h5"), Path("f2.h5")]  # fastMRI layout: the inputs' names
    stamp = (out / "f0.h5").stat().st_mtime_ns
    again = recon.reconstruct_directory(d, out, ["zero-filled"], accel=4, maps_fn=_true_maps)
    assert [o.status for o in again.outcomes] == ["skipped", "failed", "skipped"]
    assert (out / "f0.h5").stat().st_mtime_ns == stamp
    redo = recon.reconstruct_directory(d, out, ["zero-filled"], accel=4, maps_fn=_true_maps, overwrite=True)
    assert [o.status for o in redo.outcomes] == ["done", "failed", "done"]
    assert (out / "f0.h5").stat().st_mtime_ns != stamp
    summary = recon.format_directory_summary(again)
    assert "0 done, 2 skipped" in summary and "1 failed" in summary and "f1.h5" in summary


def test_cli_directory_summary_exit_codes_and_msm_uncertainty(tmp_path, capsys, monkeypatch, tiny_msm):
    d = _scan_dir(tmp_path / "in", n=3, bad=(2,))
    monkeypatch.chdir(tmp_path)
    args = ["recon", "in", "--accel", "4", "-o", "out", "-m", "zero-filled", "-m", "msm", "--checkpoint",
            str(tiny_msm), "--steps", "2", "--w", "1", "--samples", "2", "-q"]
    assert main(args) == 1  # one file failed
    out = capsys.readouterr().out
    assert "2 done, 0 skipped (already done), 1 failed" in out and "failed f2.h5" in out
    assert "msm" in out and "zero-filled" in out  # the mean-metrics table
    with h5py.File(tmp_path / "out" / "msm" / "f0.h5") as f:
        rec, unc = f["reconstruction"][()], f["uncertainty"][()]
        assert rec.shape == unc.shape == (1, 32, 32) and np.isfinite(rec).all() and unc.max() > 0
    (d / "f2.h5").unlink()
    assert main(args) == 0  # everything done before: all skipped
    assert "0 done, 2 skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    "setup,args,expect",
    [
        ("none", [], "needs -o"),
        ("none", ["-o", "{in}"], "input directory"),
        ("empty", ["-o", "out"], "no .h5 files"),
        ("none", ["-o", "afile"], "must be a directory"),
        ("none", ["-o", "out", "-m", "nope"], "unknown method"),
    ],
)
def test_cli_directory_bad_arguments(tmp_path, capsys, monkeypatch, setup, args, expect):
    d = tmp_path / "in"
    if setup == "empty":
        d.mkdir()
    else:
        _scan_dir(d, n=1)
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    rc = main(["recon", str(d), "--accel", "4", "-m", "zero-filled"] + [a.replace("{in}", str(d)) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and expect in err[0], err
    assert _files(tmp_path) == before


def test_single_file_under_torchrun_is_rank_zeros(tmp_path, capsys, monkeypatch):
    d = _scan_dir(tmp_path / "in", n=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["recon", str(d / "f0.h5"), "--accel", "4", "-m", "zero-filled", "-o", "o.h5"]) == 0
    assert "rank 0 reconstructs it" in capsys.readouterr().out
    assert not (tmp_path / "o.h5").exists()


def test_two_processes_split_a_directory(tmp_path):
    """Two ``python -m mrimsm recon`` processes with torchrun's variables (no process
    group needed): every file reconstructed exactly once."""
    d = _scan_dir(tmp_path / "in", n=3, size=32, coils=2)
    out = tmp_path / "out"
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "mrimsm", "recon", str(d), "-o", str(out), "--accel", "4", "-m", "zero-filled",
             "-q"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "[rank 0] done    f0.h5" in outs[0][1] + outs[0][0] and "f2.h5" in outs[0][1] + outs[0][0]
    assert "[rank 1] done    f1.h5" in outs[1][1] + outs[1][0]
    assert "f0.h5" not in outs[1][1] + outs[1][0]
    assert "rank 1 of 2: 1 of 3 files" in outs[1][0]
    assert _files(out) == [Path(f"f{i}.h5") for i in range(3)]


# -- the benchmarks package and its scripts ----------------------------------------------------


def _load_script(name: str):
    """The module ``benchmarks.<name>`` (the repository root is on the path)."""
    return importlib.import_module(f"benchmarks.{name}")


def test_heldout_selection_is_held_out_and_spread():
    from mrimsm.data.simulate import mni_split_indices

    data = _load_script("data")
    sel = data.heldout_selection(5)
    assert [o for o, _ in sel] == ["axial", "coronal", "sagittal"]
    assert [len(i) for _, i in sel] == [2, 2, 1]
    for o, idx in sel:
        held = mni_split_indices(o, "heldout", step=2)
        assert set(idx) <= set(held) and not set(idx) & set(mni_split_indices(o, "train", step=1))
        assert len(set(idx)) == len(idx)
    assert data.heldout_selection(5) == sel
    with pytest.raises(MrimsmError, match="--slices"):
        data.heldout_selection(0)


def test_prepared_volumes_keep_or_subsample_the_acquired_lines(prepared_measurements):
    from mrimsm.data.datasets import MeasurementDataset
    from mrimsm.data.espirit import acs_width

    data = _load_script("data")
    ds = MeasurementDataset(prepared_measurements, "val")
    (v4,) = data.prepared_volumes(prepared_measurements, 4.0, 0, 10)
    np.testing.assert_array_equal(v4.mask, ds.masks)
    assert v4.reference.shape == (len(ds), 64, 64) and v4.reference.dtype == np.float32
    (v8,) = data.prepared_volumes(prepared_measurements, 8.0, 0, 10)
    assert np.all(v8.mask <= v4.mask) and v8.mask.sum() < v4.mask.sum()  # a subset of the acquisition
    assert all(acs_width(a) == acs_width(b) for a, b in zip(v8.mask, v4.mask))  # centre kept
    assert np.all(v8.kspace[..., ~v8.mask[0]][0] == 0)
    (again,) = data.prepared_volumes(prepared_measurements, 8.0, 0, 10)
    np.testing.assert_array_equal(again.mask, v8.mask)
    with pytest.raises(MrimsmError, match="R = 2"):
        data.prepared_volumes(prepared_measurements, 2.0, 0, 10)


def test_recon_benchmark_smoke(tmp_path, monkeypatch, capsys, tiny_msm):
    """``python -m benchmarks.recon`` end to end on one 32 x 32 slice with a tiny model and few steps."""
    bench = _load_script("recon")
    monkeypatch.setattr(sys, "argv", [
        str(REPO / "benchmarks" / "recon.py"), "--slices", "1", "--size", "32", "--coils", "4", "--steps", "2",
        "--ablation-steps", "1", "--samples", "1", "--ablation-samples", "2", "--checkpoint", str(tiny_msm),
        "--out", str(tmp_path), "--quiet", "--accels", "2", "4"])  # 32 columns leave no room for R = 6 beside the 8 centre columns
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert exc.value.code == 0, capsys.readouterr().err
    import csv

    rows = list(csv.DictReader(open(tmp_path / "recon.csv")))
    got = {(float(r["accel"]), r["label"]) for r in rows}
    from_bench = {(4.0, f"MSM dc {label}") for label, _ in bench.DC_ABLATIONS}
    assert got == {(a, lab) for a in (2.0, 4.0) for lab in ("zero-filled", "SENSE", "CS-L1", "MSM")} | {
        (4.0, "MSM w=1"), (4.0, "MSM 1 steps"), (4.0, "MSM mean of 2"), (4.0, "MSM start none t0=1"), (4.0, "MSM start sense t0=0.3")} | from_bench
    by = {(float(r["accel"]), r["label"]): r for r in rows}
    assert float(by[4.0, "MSM"]["nfe_per_slice"]) == 6 and float(by[4.0, "MSM w=1"]["nfe_per_slice"]) == 2
    assert float(by[4.0, "MSM mean of 2"]["nfe_per_slice"]) == 12
    assert float(by[4.0, "CS-L1"]["psnr_paper_mean"]) > float(by[4.0, "zero-filled"]["psnr_paper_mean"])
    assert all(np.isfinite(float(r["psnr_fastmri_mean"])) for r in rows)
    md = (tmp_path / "recon.md").read_text()
    assert "paper" in md and "fastMRI" in md and "Ablation: masks per step" in md and "Ablation: reverse steps" in md
    assert "Ablation: posterior samples averaged" in md
    assert "Ablation: data consistency" in md and "Ablation: start of the chain" in md


def test_csmri_benchmark_smoke_and_bad_checkpoint(tmp_path, monkeypatch, capsys, tiny_msm):
    """``python -m benchmarks.csmri`` on one slice without SSDU (table, CSV, figure), and a missing
    checkpoint is a one-line error before any work."""
    bench = _load_script("csmri")
    base = [str(REPO / "benchmarks" / "csmri.py"), "--slices", "1", "--size", "32", "--coils", "4",
            "--out", str(tmp_path), "--quiet", "--accels", "4"]
    monkeypatch.setattr(sys, "argv", base + ["--methods", "zero-filled", "msm", "--steps", "2", "--w", "1",
                                             "--checkpoint", str(tiny_msm)])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    assert exc.value.code == 0, capsys.readouterr().err
    assert (tmp_path / "csmri.png").stat().st_size > 1000
    text = (tmp_path / "csmri.md").read_text()
    assert "| MSM |" in text and "| zero-filled |" in text and "R = 4" in text
    from benchmarks.readme import read_table

    table = read_table(tmp_path / "csmri_readme.csv")  # the README's result file, as the generator reads it
    assert table.header[0] == "method" and table.header[1].startswith("R = 4 (") and table.header[-1] == "NFE/slice"
    assert [r[0] for r in table.rows] == ["zero-filled", "MSM"]
    assert table.rows[0][-1] == "-" and int(table.rows[1][-1]) > 0
    md_psnr = next(line for line in text.splitlines() if line.startswith("| MSM |")).split("|")[2]
    assert table.rows[1][1] == md_psnr.split()[0]  # the markdown table's paper PSNR, same rounding
    assert "MSM model:" in table.provenance["setup"] and "--accels 4" in table.provenance["command"]
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", base + ["--methods", "msm", "--checkpoint", str(tmp_path / "none.pt")])
    with pytest.raises(SystemExit) as exc:
        bench.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")


def test_noise_free_twin_and_truth_metrics(tmp_path):
    """A noise-free twin (same seed, noise 0) differs from the noisy file by the noise only,
    and truth_metrics scores against it in both conventions."""
    import h5py
    from types import SimpleNamespace

    from mrimsm.data.simulate import mni_split_indices, simulate_volume_file
    from mrimsm.metrics import per_slice_metrics, volume_metrics

    data, runs = _load_script("data"), _load_script("runs")
    idx = mni_split_indices("axial", "heldout", step=2)[:2]
    (tmp_path / "clean").mkdir()
    noisy = simulate_volume_file(tmp_path / "v.h5", "axial", idx, 32, 4, 0.01, True, seed=3)
    twin = simulate_volume_file(tmp_path / "clean" / "v.h5", "axial", idx, 32, 4, 0.0, True, seed=3)
    with h5py.File(noisy) as a, h5py.File(twin) as b:
        diff = a["kspace"][()] - b["kspace"][()]
    assert abs(float(np.std(diff.real)) - 0.01) < 0.001 and abs(float(np.std(diff.imag)) - 0.01) < 0.001
    clean = data.read_references([twin])
    assert clean["v.h5"].shape == (2, 32, 32) and clean["v.h5"].dtype == np.float32
    x = clean["v.h5"] + np.float32(0.01) * np.random.default_rng(0).standard_normal((2, 32, 32)).astype(np.float32)
    rec = SimpleNamespace(accel=4.0, label="m", volume="v.h5", slices=[0, 1], result=SimpleNamespace(reconstruction=x))
    got = runs.truth_metrics([rec], clean)[(4.0, "m")]
    assert got["psnr_clean_fastmri"] == pytest.approx(volume_metrics(clean["v.h5"], x)["psnr"])
    assert got["psnr_clean_paper"] == pytest.approx(float(per_slice_metrics(clean["v.h5"], x)["psnr"].mean()))
    assert got["psnr_clean_paper"] > 25 and 0 < got["ssim_clean_paper"] <= 1


def test_prior256_sets_columns_b0_and_the_sets_filter(tmp_path):
    """prior256.py's test sets: --columns writes the same slices in a wider matrix, the b0
    slices come out of a dipy wheel at twice their size and in [0, 1], --sets keeps the
    named ones and names the rest when a name is wrong."""
    import gzip
    import io
    import types
    import zipfile

    import nibabel as nib
    import pytest

    from mrimsm.data.fastmri_io import read_multicoil
    from mrimsm.errors import MrimsmError

    p256 = _load_script("prior256")
    vol = np.zeros((6, 6, 2, 1), np.float32)
    vol[1:5, 2:4, 0, 0] = 10.0
    vol[1:5, 2:4, 1, 0] = 20.0
    vol[2, 2, 1, 0] = 40.0
    wheel = tmp_path / "dipy-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(p256.DIPY_B0_MEMBER, gzip.compress(nib.Nifti1Image(vol, np.eye(4)).to_bytes()))
        t1 = io.BytesIO()
        np.save(t1, np.ones((16, 16), np.float32))
        z.writestr(p256.DIPY_MEMBER, t1.getvalue())
    b0 = p256.dipy_b0_slices(wheel)
    assert b0.shape == (2, 12, 12) and b0.dtype == np.float32
    # normalized by the volume's maximum (40), then linear resampling: a flat 10 stays 0.25
    assert b0.min() >= 0 and 0.5 < b0.max() <= 1.0 and b0[0].max() == pytest.approx(0.25, abs=1e-3)
    assert p256.dipy_b0_slices(tmp_path / "t1.npy") is None  # an .npy holds no b0 slices

    args = types.SimpleNamespace(sizes=[256], scales=[1.0], columns=[300], slices=1, coils=2, noise=0.0,
                                 dipy=wheel, sets=["mni256c300", "dipyb0"])
    sets = p256.write_sets(tmp_path / "w", args)
    assert list(sets) == ["mni256c300", "dipyb0"]
    wide = read_multicoil(sets["mni256c300"][0])
    assert wide.kspace.shape[-2:] == (512, 300) and wide.recon_size == (256, 256)
    assert wide.pixel_mm == pytest.approx((1.0, 1.0), abs=1e-3)
    assert read_multicoil(sets["dipyb0"][0]).kspace.shape[:1] == (2,)
    args.sets = ["mni256", "nope"]
    with pytest.raises(MrimsmError, match="--sets: no set named nope"):
        p256.write_sets(tmp_path / "w2", args)
