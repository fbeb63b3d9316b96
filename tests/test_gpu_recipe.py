"""training/gpu_train.py, the GPU recipe, on CPU: resume a state for a wall-clock budget,
write it in parts, join the parts back."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mrimsm.checkpoint import load_checkpoint
from mrimsm.config import load_config
from mrimsm.train import train
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _recipe():
    return load_script("training/gpu_train.py", "gpu_train")


def _small_config(tmp_path: Path, **data) -> Path:
    d = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    d["model"].update(model_channels=16, channel_mult=[1, 2])
    d["train"].update(batch_size=2, max_steps=1, log_every=1, sample_every=0, ckpt_every=0)
    if data:
        d["data"] = data
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_recipe_resumes_for_a_budget_and_round_trips_the_parts(tmp_path, prepared_measurements, monkeypatch):
    import mrimsm.trainmethod as tm

    monkeypatch.setattr(tm, "measurement_data", tm.measurement_data)  # the recipe reroutes it; undone after
    cfg_path = _small_config(tmp_path)
    cfg = load_config(cfg_path).replace(**{"data.root": str(prepared_measurements), "data.simulated": None})
    first = train(cfg, tmp_path / "start", device="cpu", echo=lambda m: None)  # the "shipped" state, step 1
    state = tmp_path / "start" / "last.pt"
    out = tmp_path / "OUT"
    budget_s = 8.0
    gt = _recipe()
    code = gt.main([
        "train", str(cfg_path), str(state), "--out", str(out), "--data", str(prepared_measurements),
        "--minutes", str(budget_s / 60), "--batch", "64", "--device", "cpu", "--threads", "1",
        "--probe-steps", "2", "--max-chunk-s", "2", "--part-mib", "0.25", "--log-every", "1",
        "--sampling-calls", "1", "--sampling-batches", "1",
        "--run-dir", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), "--site", str(tmp_path / "site"),
    ])
    assert code == 0
    assert getattr(tm.measurement_data, "_in_memory", False)  # the loop read the in-memory copy
    assert any(isinstance(b.dataset, gt._InMemory) for b in gt._CACHE.values())
    manifest = json.loads((out / "manifest.json").read_text())
    print(json.dumps(manifest["chunks"]))
    assert manifest["batch"] == 3  # --batch 64 capped at the 3 training examples
    assert manifest["precision"] == "bf16" and manifest["step_start"] == 1
    assert [(r["images_per_call"], r["precision"]) for r in manifest["sampling"]] == [(1, "fp32"), (1, "bf16")]
    assert all(r["nfe_per_s"] > 0 for r in manifest["sampling"])
    assert manifest["steps"] == manifest["step_end"] - 1 == sum(c["steps"] for c in manifest["chunks"])
    first_chunk = manifest["chunks"][0]
    if first_chunk["seconds"] + 2.0 + 2 / first_chunk["steps_per_s"] < budget_s:  # room left for a step
        assert len(manifest["chunks"]) >= 2  # measured, then filled the budget
    slack = max(c["seconds"] for c in manifest["chunks"]) + 3.0
    assert manifest["train_seconds"] <= budget_s + slack, manifest
    # parts of at most --part-mib, nothing else but the manifest and the log
    parts = sorted(out.glob("state.pt.part*"))
    assert len(parts) == len(manifest["parts"]) >= 2
    assert all(p.stat().st_size <= 0.25 * 2**20 for p in parts)
    assert {p.name for p in out.iterdir()} == {p.name for p in parts} | {"manifest.json", "log.jsonl"}
    assert len((out / "log.jsonl").read_text().splitlines()) == manifest["steps"]  # log_every 1

    # --keep-run continues the same run: the manifest counts this call's steps only
    out2 = tmp_path / "OUT2"
    assert gt.main([
        "train", str(cfg_path), str(state), "--out", str(out2), "--data", str(prepared_measurements),
        "--minutes", str(3.0 / 60), "--batch", "64", "--device", "cpu", "--threads", "1",
        "--probe-steps", "1", "--max-chunk-s", "1", "--sampling-calls", "0", "--keep-run",
        "--run-dir", str(tmp_path / "run"), "--cache", str(tmp_path / "cache"), "--site", str(tmp_path / "site"),
    ]) == 0
    again = json.loads((out2 / "manifest.json").read_text())
    assert again["state_in_step"] == 1 and again["step_start"] == manifest["step_end"]
    assert again["steps"] == again["step_end"] - again["step_start"] == sum(c["steps"] for c in again["chunks"]) >= 1
    out, manifest, parts = out2, again, sorted(out2.glob("state.pt.part*"))

    # join: the exact bytes of the run's state, a resumable checkpoint further on
    joined = tmp_path / "back" / "last.pt"
    assert gt.main(["join", str(out), "--to", str(joined)]) == 0
    assert joined.read_bytes() == (tmp_path / "run" / "last.pt").read_bytes()
    ckpt = load_checkpoint(joined)
    assert ckpt["step"] == manifest["step_end"] and ckpt["optimizer"] is not None
    moved = max((v - first.model.state_dict()[k]).abs().max().item() for k, v in ckpt["model"].items())
    assert moved > 0
    # a damaged part is refused, and nothing is written
    parts[0].write_bytes(b"x" + parts[0].read_bytes()[1:])
    with pytest.raises(SystemExit, match="does not match"):
        gt.main(["join", str(out), "--to", str(tmp_path / "bad.pt")])
    assert not (tmp_path / "bad.pt").exists()
    with pytest.raises(SystemExit, match="exists"):
        gt.main(["join", str(out), "--to", str(joined)])


def test_strip_wheel_drops_members_and_their_record_lines(tmp_path):
    import zipfile

    gt = _recipe()
    whl = tmp_path / "pkg-1.0-cp312-cp312-manylinux2014_x86_64.whl"
    members = {"pkg/__init__.py": "x = 1", "pkg/tests/test_a.py": "t", "pkg/data/__init__.py": "",
               "pkg/data/big.npz": "0" * 1000, "pkg-1.0.dist-info/METADATA": "Name: pkg"}
    record = "\n".join(f"{m},sha256=abc,1" for m in members) + "\npkg-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
        z.writestr("pkg-1.0.dist-info/RECORD", record)
    gt._strip_wheel(whl, ("pkg/tests/", "pkg/data/*.npz"))
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        kept_record = z.read("pkg-1.0.dist-info/RECORD").decode()
    assert names == {"pkg/__init__.py", "pkg/data/__init__.py", "pkg-1.0.dist-info/METADATA",
                     "pkg-1.0.dist-info/RECORD"}
    assert "tests" not in kept_record and "big.npz" not in kept_record and "pkg/data/__init__.py" in kept_record
    assert not whl.with_name(whl.name + ".tmp").exists()
    stripped = whl.read_bytes()
    gt._strip_wheel(whl, ("pkg/tests/", "pkg/data/*.npz"))  # again: nothing left to drop
    gt._strip_wheel(whl, ())
    assert whl.read_bytes() == stripped


def test_split_file_parts(tmp_path):
    gt = _recipe()
    src = tmp_path / "f.bin"
    data = os.urandom(2500)
    src.write_bytes(data)
    (tmp_path / "o").mkdir()
    parts = gt.split_file(src, tmp_path / "o", 1000)
    assert [p["bytes"] for p in parts] == [1000, 1000, 500]
    assert b"".join((tmp_path / "o" / p["file"]).read_bytes() for p in parts) == data


@pytest.mark.slow
def test_recipe_as_one_command_on_simulated_data(tmp_path):
    """The device command itself (subprocess, bundle folder, data simulated from the MNI
    template in a fresh cache, 30 s budget). Uses the real bundle (.gpu/, made by
    `gpu_train.py bundle`) when there is one, else a bundle holding only the template."""
    bundle = REPO / ".gpu"
    if not (bundle / "nilearn").is_dir():
        import shutil

        bundle = tmp_path / "bundle"
        spec = importlib.util.find_spec("nilearn")
        src = Path(list(spec.submodule_search_locations)[0]).parent / _recipe().MNI_REL
        (bundle / _recipe().MNI_REL).parent.mkdir(parents=True)
        shutil.copyfile(src, bundle / _recipe().MNI_REL)
    cfg_path = _small_config(tmp_path, simulated={"size": 64, "num_coils": 4, "accel": 4, "rho": 0.01, "seed": 0})
    env = {**os.environ, "MRIMSM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cfg = load_config(cfg_path)
    subprocess.run(
        [sys.executable, "-m", "mrimsm", "train", str(cfg_path), "--out", str(tmp_path / "start"), "-q",
         "--max-steps", "1", "--device", "cpu"], check=True, cwd=REPO, env=env, timeout=900,
    )
    assert cfg.data.simulated is not None
    proc = subprocess.run(
        [sys.executable, "training/gpu_train.py", "train", str(cfg_path), str(tmp_path / "start" / "last.pt"),
         "--out", str(tmp_path / "OUT"), "--bundle", str(bundle), "--minutes", "0.5", "--batch", "16",
         "--device", "cpu", "--threads", "1", "--run-dir", str(tmp_path / "run"),
         "--cache", str(tmp_path / "cache2"), "--site", str(tmp_path / "site"), "--prep-workers", "1",
         "--sampling-calls", "0"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "OUT" / "manifest.json").read_text())
    assert manifest["step_start"] == 1 and manifest["steps"] >= 1 and manifest["batch"] == 16
    assert manifest["prep_seconds"] > 0  # the training set was simulated there, in --cache
    assert torch.cuda.is_available() or manifest["device"] == "cpu"


def test_travelling_bytes_counts_what_the_run_tool_sends(tmp_path):
    gt = _recipe()
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("/.gpu/\n/big.bin\n")
    (repo / "tracked.txt").write_bytes(b"a" * 100)
    subprocess.run(["git", "-C", str(repo), "add", "tracked.txt", ".gitignore"], check=True)
    (repo / "untracked.txt").write_bytes(b"b" * 10)  # travels: not ignored
    (repo / "big.bin").write_bytes(b"c" * 1000)  # ignored, not carried: stays
    (repo / ".gpu" / "wheels").mkdir(parents=True)
    (repo / ".gpu" / "wheels" / "x.whl").write_bytes(b"d" * 50)
    sizes = gt.travelling_bytes(repo, [".gpu"])
    assert sizes == {"tree": 100 + 10 + len("/.gpu/\n/big.bin\n"), "carry": 50, "total": 110 + 16 + 50}
    assert gt.main(["check", "--repo", str(repo)]) == 0


def test_data_is_prepared_with_the_workers_asked_for(tmp_path, monkeypatch):
    import mrimsm.data.training_data as td

    seen = {}

    def fake_prepare(out, **kw):
        seen.update(kw)
        return out

    monkeypatch.setattr(td, "prepare_simulated_dataset", fake_prepare)
    monkeypatch.setenv("MRIMSM_CACHE", str(tmp_path))
    cfg = load_config(_small_config(tmp_path, simulated={"size": 64, "num_coils": 4, "accel": 4, "rho": 0.0}))
    assert _recipe()._prepare_data(cfg, 3) >= 0
    assert seen["workers"] == 3 and seen["size"] == 64 and seen["num_coils"] == 4


def test_bundle_wheels_for_another_python_are_skipped():
    fits = _recipe().wheel_fits_this_python
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert fits("sigpy-0.1.27-1-py3-none-any.whl") and fits("nibabel-5.4.2-py3-none-any.whl")
    assert fits(f"pywavelets-1.8.0-{here}-{here}-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    other = "cp39" if here != "cp39" else "cp310"
    assert not fits(f"pywavelets-1.8.0-{other}-{other}-manylinux_2_17_x86_64.whl")
    # the stable ABI: cp38-abi3 serves every CPython 3 from 3.8 on, not an older one
    major, minor = sys.version_info[:2]
    assert fits(f"cryptography-44.0-cp{major}{minor - 1}-abi3-manylinux_2_28_x86_64.whl")
    assert fits(f"cryptography-44.0-cp{major}{minor}-abi3-manylinux_2_28_x86_64.whl")
    assert not fits(f"cryptography-44.0-cp{major}{minor + 1}-abi3-manylinux_2_28_x86_64.whl")
    assert not fits(f"numpy-2.0-cp{major}{minor - 1}-cp{major}{minor - 1}-manylinux_2_28_x86_64.whl")


def test_check_names_the_in_progress_states_as_what_to_move_aside(tmp_path, capsys):
    gt = _recipe()
    repo = tmp_path / "repo"
    (repo / "training" / "in_progress").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    state = repo / "training" / "in_progress" / "run_last.pt"
    with open(state, "wb") as f:
        f.truncate(65 * 2**20)  # sparse: counts 65 MiB, writes nothing
    subprocess.run(["git", "-C", str(repo), "add", "training"], check=True)
    assert gt.main(["check", "--repo", str(repo)]) == 1
    out = capsys.readouterr().out
    assert "TOO LARGE" in out and "mv training/in_progress /tmp/in_progress" in out
    shutil.move(str(repo / "training" / "in_progress"), str(tmp_path / "aside"))  # what the advice says
    assert gt.main(["check", "--repo", str(repo)]) == 0
    assert "in_progress" not in capsys.readouterr().out
