"""`mrimsm train` and `mrimsm sample` from the command line: happy paths and bad input
(one line on stderr, exit code 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest
import torch
import yaml

from mrimsm.cli.main import main
from test_train import msm_config  # registers the in-memory "msm-mem" method

REPO = Path(__file__).resolve().parents[1]


def _files(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*")} if root.exists() else set()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


@pytest.fixture
def mem_config(tmp_path) -> Path:
    """A config file for the in-memory MSM method (tiny model, 32 x 32, 4 coils)."""
    cfg = msm_config(max_steps=2, ckpt_every=1).to_dict()
    path = tmp_path / "mem.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def trained(tmp_path, mem_config, capsys) -> Path:
    run = tmp_path / "run"
    assert main(["train", str(mem_config), "--out", str(run), "-q", "--device", "cpu"]) == 0
    capsys.readouterr()
    return run


# -- train ----------------------------------------------------------------------------------


def test_train_resume_and_max_steps(tmp_path, mem_config, trained, capsys):
    assert (trained / "last.pt").is_file() and (trained / "log.jsonl").is_file()
    # the same command again refuses to overwrite
    assert main(["train", str(mem_config), "--out", str(trained), "-q"]) == 2
    assert "--resume" in _error_line(capsys)
    # --resume --max-steps continues
    assert main(["train", str(mem_config), "--out", str(trained), "-q", "--resume", "--max-steps", "3"]) == 0
    from mrimsm.checkpoint import load_checkpoint

    assert load_checkpoint(trained)["step"] == 3
    assert len((trained / "log.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["train"].update(lrr=1), "unknown key 'train.lrr'"),
        (lambda d: d["train"].pop("lr"), "missing key 'train.lr'"),
        (lambda d: d.update(extra={}), "unknown key 'extra'"),
    ],
)
def test_train_bad_config(tmp_path, mem_config, capsys, edit, message):
    d = yaml.safe_load(mem_config.read_text())
    edit(d)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(d))
    before = _files(tmp_path)
    assert main(["train", str(bad), "--out", str(tmp_path / "run")]) == 2
    line = _error_line(capsys)
    assert message in line and "bad.yaml" in line
    assert _files(tmp_path) == before


def test_train_bad_data_dir(tmp_path, capsys):
    before = _files(tmp_path)
    code = main(["train", str(REPO / "configs" / "tiny.yaml"), "--data", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert "does not exist" in _error_line(capsys)
    not_prepared = tmp_path / "not_prepared"
    not_prepared.mkdir()
    (not_prepared / "notes.txt").write_text("hello")
    before = _files(tmp_path)
    code = main(["train", str(REPO / "configs" / "tiny.yaml"), "--data", str(not_prepared),
                 "--out", str(tmp_path / "run")])
    assert code == 2
    _error_line(capsys)
    assert _files(tmp_path) == before


def test_train_bad_options(tmp_path, mem_config, capsys):
    assert main(["train", str(mem_config), "--out", str(tmp_path / "r"), "--max-steps", "-1"]) == 2
    assert "--max-steps" in _error_line(capsys)
    assert main(["train", str(mem_config), "--out", str(tmp_path / "r"), "--method", "ssdu"]) == 2
    assert "--method" in _error_line(capsys)
    assert main(["train", str(mem_config), "--out", str(tmp_path / "r"), "--device", "tpu"]) == 2
    assert "--device" in _error_line(capsys)
    assert not (tmp_path / "r").exists()


# -- sample ---------------------------------------------------------------------------------


def test_sample_writes_hdf5_and_png(tmp_path, trained, capsys):
    out = tmp_path / "out" / "s.h5"
    code = main(["sample", str(trained), "-n", "3", "--steps", "4", "--w", "2", "--seed", "5", "-o", str(out),
                 "-q", "--batch-size", "2", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    with h5py.File(out) as f:
        samples = f["samples"][()]
        assert samples.shape == (3, 32, 32) and samples.dtype == "complex64"
        assert f["magnitude"].shape == (3, 32, 32)
        assert f.attrs["w"] == 2 and f.attrs["steps"] == 4 and f.attrs["seed"] == 5
    assert out.with_suffix(".png").is_file()
    # same seed, same samples
    out2 = tmp_path / "again.h5"
    assert main(["sample", str(trained / "last.pt"), "-n", "3", "--steps", "4", "--w", "2", "--seed", "5",
                 "-o", str(out2), "-q", "--batch-size", "2"]) == 0
    with h5py.File(out2) as f:
        assert (f["samples"][()] == samples).all()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--w", "0"], "--w must be >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["-n", "0"], "-n must be >= 1"),
        (["--steps", "5000"], "--steps must be <= 1000"),
        (["--eta", "2"], "--eta"),
    ],
)
def test_sample_bad_options(tmp_path, trained, capsys, args, message):
    before = _files(tmp_path)
    assert main(["sample", str(trained), "-o", str(tmp_path / "s.h5"), "-q", *args]) == 2
    assert message in _error_line(capsys)
    assert _files(tmp_path) == before


def test_sample_bad_checkpoints(tmp_path, trained, capsys):
    ckpt = trained / "last.pt"
    data = ckpt.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 3])
    before = _files(tmp_path)
    assert main(["sample", str(cut), "-o", str(tmp_path / "s.h5"), "-q"]) == 2
    assert "truncated" in _error_line(capsys)
    assert main(["sample", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "s.h5"), "-q"]) == 2
    assert "does not exist" in _error_line(capsys)
    assert _files(tmp_path) == before

    # a checkpoint whose config describes another model shape than its weights
    obj = torch.load(ckpt, weights_only=True)
    obj["config"]["model"]["model_channels"] = 8
    other = tmp_path / "other.pt"
    torch.save(obj, other)
    before = _files(tmp_path)
    assert main(["sample", str(other), "-o", str(tmp_path / "s.h5"), "-q"]) == 2
    assert "another shape" in _error_line(capsys)
    assert _files(tmp_path) == before


def test_sample_never_overwrites_its_checkpoint(tmp_path, trained, capsys):
    ckpt = tmp_path / "model.h5"  # a checkpoint with an unlucky name
    ckpt.write_bytes((trained / "last.pt").read_bytes())
    data = ckpt.read_bytes()
    assert main(["sample", str(ckpt), "-o", str(ckpt), "-q", "--steps", "2", "-n", "1"]) == 2
    assert "overwrite the checkpoint" in _error_line(capsys)
    assert ckpt.read_bytes() == data and not (tmp_path / "model.png").exists()


def test_sample_needs_an_msm_checkpoint(tmp_path, capsys):
    from test_train import toy_config

    from mrimsm.train import train

    train(toy_config(max_steps=1), tmp_path / "toy", echo=lambda m: None)
    assert main(["sample", str(tmp_path / "toy"), "-o", str(tmp_path / "s.h5"), "-q"]) == 2
    assert "not an msm one" in _error_line(capsys)
    assert not (tmp_path / "s.h5").exists()


def test_train_and_sample_on_prepared_shards(tmp_path, prepared_measurements, capsys):
    """The real data path: MeasurementDataset shards (64 x 64, 8 coils, rho 0.05 from the manifest)."""
    d = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    d["model"].update(model_channels=16, channel_mult=[1, 2])
    d["train"].update(batch_size=2, max_steps=2, log_every=1, sample_every=0)
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(d))
    run = tmp_path / "run"
    code = main(["train", str(cfg), "--data", str(prepared_measurements), "--out", str(run), "-q"])
    assert code == 0, capsys.readouterr().err
    from mrimsm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run)
    meta = ckpt["meta"]
    # diffusion.rho: null -> the manifest's measured total: the raw files' own noise plus rho 0.05
    manifest = json.loads((prepared_measurements / "manifest.json").read_text())
    assert meta["rho"] == pytest.approx(manifest["noise"]["total"]) and 0.05 < meta["rho"] < 0.053
    assert meta["mask"]["kind"] == "paper" and meta["image_shape"] == [64, 64] and meta["num_coils"] == 8
    assert meta["train_masks"].shape == (3, 64)
    assert ckpt["config"]["data"]["root"] == str(prepared_measurements)
    out = tmp_path / "s.h5"
    assert main(["sample", str(run), "-n", "1", "--steps", "3", "-o", str(out), "-q"]) == 0
    with h5py.File(out) as f:
        assert f["samples"].shape == (1, 64, 64)
