"""Faults of prepared data and of training on it (issue 27: F4, F11, F12, F20, F26 and the
resume decision): prep over a data set of other parameters, shards of two prep runs, a
shard truncated mid-run, malformed manifests, files locked by another writer, refusals
that used to write into the run directory, resuming on other data. Each bad input is one
``error:`` line, exit 2, and changes no file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

from mrimsm.cli.main import main
from conftest import write_fake_fastmri

REPO = Path(__file__).resolve().parents[1]

#: prep options of the small sets here: 3 volumes of 2 slices, 32 x 32, 4 coils -> 2 train + 1 val
PREP = ["--size", "32", "--skip-last", "0", "--center-lines", "6", "--val-fraction", "0.34", "-q"]


def _run(args, capsys):
    """``mrimsm ARGS`` in-process: (exit code, stderr lines)."""
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err.strip().splitlines()


def _one_error(rc, err, *needles) -> str:
    assert rc == 2, (rc, err)
    assert len(err) == 1 and err[0].startswith("error: "), err
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def _state(root: Path) -> dict:
    """Every file under ``root`` and a hash of its bytes (what 'no file changed' compares)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _hash(path: Path):
    with h5py.File(path, "r") as f:
        return f.attrs["params_hash"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    for i in range(3):
        write_fake_fastmri(folder / f"v{i}.h5", "full", num_slices=2, size=32, num_coils=4, seed=i)
    return folder


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory) -> Path:
    """An R = 4 data set of ``raw`` (copy it before changing it)."""
    out = tmp_path_factory.mktemp("prepared") / "r4"
    assert main(["prep-fastmri", str(raw), str(out), *PREP]) == 0
    return out


@pytest.fixture
def data(prepared, tmp_path) -> Path:
    """A private copy of the R = 4 set."""
    return Path(shutil.copytree(prepared, tmp_path / "data"))


def _config(tmp_path: Path, **train) -> Path:
    """A config for a very small MSM network on the 32 x 32 sets here."""
    t = {"lr": 1e-3, "batch_size": 2, "max_steps": 2, "ckpt_every": 0, "log_every": 1, "sample_every": 0}
    t.update(train)
    cfg = {"method": "msm", "data": {"root": "unset"},
           "model": {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                     "attention_resolutions": [], "num_head_channels": 8},
           "diffusion": {"rho": None, "train_steps": 20}, "train": t}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- F4: prep over a data set of other parameters; a set mixing two prep runs ----------------


def test_prep_over_a_set_of_other_parameters_is_refused(raw, data, capsys):
    before = _state(data)
    rc, err = _run(["prep-fastmri", raw, data, *PREP, "--accel", "8"], capsys)
    _one_error(rc, err, str(data), "prepared with other parameters", "accel 4.0 -> 8.0", "--overwrite")
    assert _state(data) == before
    assert _run(["prep-fastmri", raw, data, *PREP], capsys)[0] == 0  # the same parameters: resumed
    assert _state(data).keys() == before.keys()


def test_prep_overwrite_removes_the_manifest_first_and_old_shards(raw, data, capsys, monkeypatch):
    import mrimsm.data.prep.shards as prep_shards

    shutil.copy(data / "train" / "v0.h5", data / "train" / "gone.h5")  # an old shard no new file rewrites
    old_hash = _hash(data / "train" / "v0.h5")
    real, written = prep_shards.write_volume_shard, []

    def write_then_die(path, result, task):
        assert not (data / "manifest.json").exists(), "the old manifest must go before the first new shard"
        assert not (data / "train" / "gone.h5").exists()
        real(path, result, task)
        written.append(Path(path))
        raise KeyboardInterrupt  # interrupted after the first new shard

    monkeypatch.setattr(prep_shards, "write_volume_shard", write_then_die)
    rc, err = _run(["prep-fastmri", raw, data, *PREP, "--accel", "8", "--overwrite"], capsys)
    assert rc == 130 and len(err) == 1 and err[0].startswith("interrupted: ") and "rerun" in err[0], err
    assert len(written) == 1 and not (data / "manifest.json").exists()
    # what is left are shards of the new parameters only: no complete manifest beside a mix
    new_hash = _hash(written[0])
    assert new_hash != old_hash
    assert all(_hash(p) == new_hash for p in data.rglob("*.h5"))
    # an unfinished set of other parameters (no manifest) is refused too ...
    before = _state(data)
    rc, err = _run(["prep-fastmri", raw, data, *PREP], capsys)
    _one_error(rc, err, "was prepared with other parameters", "--overwrite")
    assert _state(data) == before
    # ... and the interrupted command, run again, finishes the set
    monkeypatch.setattr(prep_shards, "write_volume_shard", real)
    assert _run(["prep-fastmri", raw, data, *PREP, "--accel", "8", "--overwrite"], capsys)[0] == 0
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["params_hash"] == new_hash and manifest["params"]["accel"] == 8.0
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*.h5")) == sorted(s["shard"] for s in manifest["shards"])
    assert all(_hash(p) == new_hash for p in data.rglob("*.h5"))


def test_train_refuses_a_set_mixing_two_prep_runs(raw, data, tmp_path, capsys):
    r8 = tmp_path / "r8"
    assert _run(["prep-fastmri", raw, r8, *PREP, "--accel", "8"], capsys)[0] == 0
    shutil.copy(r8 / "train" / "v0.h5", data / "train" / "v0.h5")  # one shard of the other run
    before = _state(data)
    rc, err = _run(["train", _config(tmp_path), "--data", data, "--out", tmp_path / "run", "-q"], capsys)
    _one_error(rc, err, str(data / "train" / "v0.h5"), "mixes two prep runs", "--overwrite")
    assert _state(data) == before and not (tmp_path / "run").exists()


def test_simulated_cache_is_replaced_not_refused(tmp_path, monkeypatch):
    """prep's internal callers that build a cache pass overwrite: a set of other settings
    in the cache directory is rebuilt."""
    import mrimsm.data.prep as prep
    import mrimsm.data.prep.simulated as prep_simulated

    seen = []
    monkeypatch.setattr(prep_simulated, "prepare_dataset", lambda raw, out, opts, **kw: seen.append(opts.overwrite))
    monkeypatch.setattr("mrimsm.data.simulate.write_simulated_raw", lambda *a, **k: None)
    prep.prepare_simulated_dataset(tmp_path / "cache", size=32)
    assert seen == [True]


# -- F11: a shard truncated while train runs -----------------------------------------------------


def test_shard_truncated_mid_run_names_it_saves_and_says_how_to_resume(data, tmp_path, capsys, monkeypatch):
    from mrimsm.checkpoint import load_checkpoint
    from mrimsm.diffusion.method import MSMMethod

    real = MSMMethod.loss

    def loss(self, model, batch, generator):
        if batch["step"] == 0:  # after the first batch was read: cut every train shard
            for shard in (data / "train").glob("*.h5"):
                os.truncate(shard, 4096)
        return real(self, model, batch, generator)

    monkeypatch.setattr(MSMMethod, "loss", loss)
    cfg, run = _config(tmp_path, max_steps=4), tmp_path / "run"
    rc, err = _run(["train", cfg, "--data", data, "--out", run, "-q"], capsys)
    line = _one_error(rc, err, "truncated or corrupt shard", str(data / "train"), "prep-fastmri",
                      f"checkpoint {run / 'last.pt'} written at step 1",
                      f"resume with: mrimsm train {cfg} --data {data} --out {run} --resume --max-steps 4")
    assert "Traceback" not in line and "OSError" not in line
    assert load_checkpoint(run)["step"] == 1


# -- F12: malformed manifest.json ----------------------------------------------------------------


@pytest.mark.parametrize("content, problem", [
    ("[1, 2]", "the top level is a list, not an object"),
    ('{"shards": "train/v0.h5"}', "'shards' is a string, not a list"),
    ('{"shards": [{"split": "train"}]}', "shards[0] has no 'shard'"),
    ('{"shards": [{"shard": "../../etc/x.h5", "split": "train"}]}', "is not a path inside the data directory"),
    ('{"size": "big", "shards": []}', "'size' is a string, not an integer"),
    (b"\xff\xfe\x00garbage", "not JSON"),
    ('{"shards": [', "not JSON"),
])
def test_malformed_manifest_is_one_line(data, tmp_path, capsys, content, problem):
    mpath = data / "manifest.json"
    mpath.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = _state(data)
    rc, err = _run(["train", _config(tmp_path), "--data", data, "--out", tmp_path / "run", "-q"], capsys)
    _one_error(rc, err, str(mpath), problem)
    assert _state(data) == before and not (tmp_path / "run").exists()


def test_prep_over_a_malformed_manifest_needs_overwrite(raw, data, capsys):
    (data / "manifest.json").write_text("[]")
    before = _state(data)
    rc, err = _run(["prep-fastmri", raw, data, *PREP], capsys)
    _one_error(rc, err, "malformed manifest", "--overwrite")
    assert _state(data) == before


# -- F20: a healthy file locked by another writer ------------------------------------------------


@pytest.mark.parametrize("command", ["recon", "prep", "train"])
def test_a_locked_file_is_reported_as_locked(raw, data, tmp_path, command):
    locked = {"recon": raw / "v0.h5", "prep": raw / "v1.h5", "train": data / "train" / "v0.h5"}[command]
    args = {
        "recon": ["recon", locked, "-R", "4", "-m", "zero-filled", "-o", tmp_path / "out" / "x.h5", "-q"],
        "prep": ["prep-fastmri", raw, tmp_path / "out", *PREP],
        "train": ["train", _config(tmp_path), "--data", data, "--out", tmp_path / "out", "-q"],
    }[command]
    before = _state(raw), _state(data)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("HDF5_USE_FILE_LOCKING", None)
    with h5py.File(locked, "r+"):  # h5py locks a file it holds open for writing
        proc = subprocess.run([sys.executable, "-m", "mrimsm", *map(str, args)], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=120)
    err = proc.stderr.strip().splitlines()
    _one_error(proc.returncode, err, f"{locked}: locked by another process (HDF5 file locking); wait for it, or set "
                                     f"HDF5_USE_FILE_LOCKING=FALSE if the file system does not support locks")
    assert "corrupt" not in err[0]
    assert (_state(raw), _state(data)) == before and not (tmp_path / "out").exists()


# -- F26: refusals come before anything is written to the run directory --------------------------


@pytest.mark.parametrize("exists", [False, True])
def test_batch_larger_than_the_data_writes_nothing(data, tmp_path, capsys, exists):
    run = tmp_path / "runs" / "big"
    if exists:
        run.mkdir(parents=True)
    cfg = _config(tmp_path, batch_size=64)
    rc, err = _run(["train", cfg, "--data", data, "--out", run, "-q"], capsys)
    _one_error(rc, err, "fewer than one batch", "train.batch_size")
    if exists:
        assert run.is_dir() and not any(run.iterdir())
    else:
        assert not (tmp_path / "runs").exists()


# -- the decision: resuming on other data --------------------------------------------------------


def test_resume_on_other_data_is_refused_unless_allowed(raw, data, tmp_path, capsys):
    from mrimsm.checkpoint import load_checkpoint

    cfg, run = _config(tmp_path, max_steps=1), tmp_path / "run"
    assert _run(["train", cfg, "--data", data, "--out", run, "-q"], capsys)[0] == 0
    before = _state(run)
    # --data pointing elsewhere (a copy: same parameters, other directory)
    other = Path(shutil.copytree(data, tmp_path / "other"))
    rc, err = _run(["train", cfg, "--data", other, "--out", run, "--resume", "--max-steps", "2", "-q"], capsys)
    _one_error(rc, err, f"data.root: {data} -> {other}", "--allow-data-change")
    # a data.* key
    d = yaml.safe_load(cfg.read_text())
    d["data"]["flip_prob"] = 0.5
    flipped = tmp_path / "flipped.yaml"
    flipped.write_text(yaml.safe_dump(d))
    rc, err = _run(["train", flipped, "--data", data, "--out", run, "--resume", "--max-steps", "2", "-q"], capsys)
    _one_error(rc, err, "data.flip_prob: 0.0 -> 0.5")
    # the same directory prepared again with other parameters
    assert _run(["prep-fastmri", raw, other, *PREP, "--accel", "8", "--overwrite"], capsys)[0] == 0
    shutil.rmtree(data)
    shutil.copytree(other, data)
    rc, err = _run(["train", cfg, "--data", data, "--out", run, "--resume", "--max-steps", "2", "-q"], capsys)
    _one_error(rc, err, "params_hash", "accel 4.0 -> 8.0", "--allow-data-change")
    assert _state(run) == before
    # the flag continues, with a note
    rc, err = _run(["train", cfg, "--data", other, "--out", run, "--resume", "--max-steps", "2", "-q",
                    "--allow-data-change"], capsys)
    assert rc == 0 and not any(e.startswith("error") for e in err), err
    assert any(e.startswith("note: ") and "trained on other data" in e and "data.root" in e for e in err), err
    assert load_checkpoint(run)["step"] == 2
    # the same data as the checkpoint's continues without a word about it
    rc, err = _run(["train", cfg, "--data", other, "--out", run, "--resume", "--max-steps", "3", "-q"], capsys)
    assert rc == 0 and not any("other data" in e for e in err), err


def test_fine_tuning_a_shipped_state_needs_the_flag(prepared_measurements, tmp_path, capsys):
    """training/default_msm_last.pt (trained on the prepared brain set) copied to RUN/last.pt and
    resumed on other prepared shards: refused without --allow-data-change, continued with it."""
    from mrimsm.checkpoint import load_checkpoint

    state = REPO / "training" / "default_msm_last.pt"
    d = yaml.safe_load((REPO / "configs" / "default_msm.yaml").read_text())
    d["train"]["batch_size"] = 2
    cfg = tmp_path / "finetune.yaml"
    cfg.write_text(yaml.safe_dump(d))
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(state, run / "last.pt")
    step = int(load_checkpoint(run)["step"])
    args = ["train", cfg, "--data", prepared_measurements, "--out", run, "--resume", "--max-steps", step + 1, "-q"]
    rc, err = _run(args, capsys)
    _one_error(rc, err, "data.root: ~/.cache/mrimsm/brains64_prep -> ", "--allow-data-change")
    assert sorted(os.listdir(run)) == ["last.pt"]
    rc, err = _run(args + ["--allow-data-change"], capsys)
    assert rc == 0 and any(e.startswith("note: ") for e in err), err
    assert load_checkpoint(run)["step"] == step + 1
