"""DDP: two CPU processes (gloo) train like one process with the doubled batch.

The workers are forked (Linux), not spawned: a spawned worker re-imports torch and
the optimiser's dependencies (about 10 s on the shared 2-core machine).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from mrimsm.config import config_from_dict
from mrimsm.train import _INIT_STREAM, step_seed, train
from mrimsm.trainmethod import DataBundle, TrainMethod
from mrimsm.methods import register_method


@dataclass
class _DDPToyModel:
    width: int = 8


class _Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(32, 5, generator=g)
        self.y = torch.sin(self.x.sum(1, keepdim=True))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def _collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@register_method("toy-ddp")
class _DDPToy(TrainMethod):
    """Deterministic given the batch (no noise, no dropout), so ranks can be compared."""

    config_sections = {"model": _DDPToyModel}

    @classmethod
    def build_dataset(cls, cfg, dist_info):
        return DataBundle(_Data(), _collate, {})

    def build_model(self, cfg):
        return nn.Sequential(nn.Linear(5, cfg.model.width), nn.Tanh(), nn.Linear(cfg.model.width, 1))

    def loss(self, model, batch, generator):
        return (model(batch["x"]) - batch["y"]).square().mean(), {}


def _config(batch_size: int, max_steps: int = 5):
    return config_from_dict(
        {
            "method": "toy-ddp",
            "data": {"root": "unused"},
            "model": {},
            "train": {"lr": 0.05, "batch_size": batch_size, "max_steps": max_steps, "ckpt_every": 0,
                      "log_every": 1, "grad_clip": 0.5, "ema": 0.8, "seed": 3},
        }
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, batch_size: int) -> None:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    res = train(_config(batch_size), os.path.join(out_dir, "run"), device="cpu", echo=lambda m: None)
    torch.save(
        {"model": res.model.state_dict(), "ema": res.ema.state_dict(), "losses": res.losses},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


def test_two_gloo_processes_equal_one_with_the_doubled_batch(tmp_path):
    # the single-process reference first: it also imports what the optimiser pulls in
    # (torch._dynamo, seconds), which the forked workers then inherit
    single = train(_config(8), tmp_path / "single", device="cpu", echo=lambda m: None)
    port = _free_port()
    mp.start_processes(_worker, args=(2, port, str(tmp_path), 4), nprocs=2, join=True, start_method="fork")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # both ranks hold identical weights (and EMA)
    for key in r0["model"]:
        torch.testing.assert_close(r0["model"][key], r1["model"][key], rtol=0, atol=0)
        torch.testing.assert_close(r0["ema"][key], r1["ema"][key], rtol=0, atol=0)
    # ranks saw different halves of each batch
    assert r0["losses"] != r1["losses"]

    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(r0["model"][key], value, rtol=1e-5, atol=1e-6)
    for key, value in single.ema.state_dict().items():
        torch.testing.assert_close(r0["ema"][key], value, rtol=1e-5, atol=1e-6)
    # and the weights actually moved: the comparison is not between two untouched models
    torch.manual_seed(step_seed(3, _INIT_STREAM, 0))  # the loop's initial weights
    init = _DDPToy(_config(8)).build_model(_config(8))
    moved = max((v - single.model.state_dict()[k]).abs().max().item() for k, v in init.state_dict().items())
    assert moved > 1e-3
    # only rank 0 wrote the run directory
    assert (tmp_path / "run" / "last.pt").is_file()
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 5


def _msm_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from test_train import msm_config

    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    torch.set_num_threads(1)
    # noisy MSM: several network calls per step (stacked SURE/reference call + low-noise call)
    res = train(msm_config(rho=0.1, max_steps=3, batch_size=2), os.path.join(out_dir, "msm"), device="cpu",
                echo=lambda m: None)
    torch.save({"model": res.model.state_dict(), "losses": res.losses}, os.path.join(out_dir, f"msm{rank}.pt"))


def _split_msm_config():
    """The doubled batch (4) in one process, its loss computed as the two ranks compute
    theirs: each half of the batch with that rank's generator (the per-rank noise and
    steps t), the two losses averaged as DDP averages the gradients."""
    from test_train import _register_memory_msm, msm_config

    memory_msm = _register_memory_msm()

    @register_method("msm-mem-split")
    class _SplitMSM(memory_msm):
        def loss(self, model, batch, generator):
            half = batch["y"].shape[0] // 2
            total, logs = 0.0, {}
            for r in range(2):
                part = {k: (v[r * half : (r + 1) * half] if isinstance(v, torch.Tensor) and v.dim() else v)
                        for k, v in batch.items()}
                seed = step_seed(self.cfg.train.seed, r, batch["step"])
                torch.manual_seed(seed)
                gen = torch.Generator(device=generator.device)
                gen.manual_seed(seed)
                loss, logs = super().loss(model, part, gen)
                total = total + loss / 2
            return total, logs

    d = msm_config(rho=0.1, max_steps=3, batch_size=4).to_dict()
    d["method"] = "msm-mem-split"
    return config_from_dict(d, source="msm-mem-split.yaml")


def test_msm_under_ddp_equals_one_process_with_the_doubled_batch(tmp_path):
    import test_train  # noqa: F401  (registers the in-memory MSM method before forking)

    # the single-process reference first (see the first test: the forked workers inherit its imports)
    cfg = _split_msm_config()
    single = train(cfg, tmp_path / "single", device="cpu", echo=lambda m: None)
    port = _free_port()
    mp.start_processes(_msm_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0 = torch.load(tmp_path / "msm0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "msm1.pt", weights_only=True)
    assert r0["losses"] != r1["losses"]  # different examples and noise per rank
    for key in r0["model"]:
        torch.testing.assert_close(r0["model"][key], r1["model"][key], rtol=0, atol=0)
    # the reference's loss is the mean of the ranks' at every step ...
    for (s, ls), (_, l0), (_, l1) in zip(single.losses, r0["losses"], r1["losses"]):
        assert ls == pytest.approx((l0 + l1) / 2, rel=1e-5), (s, ls, l0, l1)
    # ... and the weights after 3 steps (noisy MSM, grad clipping, AdamW) are the reference's
    worst = 0.0
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(r0["model"][key], value, rtol=1e-4, atol=1e-5)
        worst = max(worst, (r0["model"][key] - value).abs().max().item())
    # the comparison is not between two untouched models: the weights moved
    torch.manual_seed(step_seed(0, _INIT_STREAM, 0))
    from mrimsm.methods import training_method as get_method

    cls = get_method("msm-mem-split")
    init = cls(cfg, cls.build_dataset(cfg, None).info).build_model(cfg).state_dict()
    moved = max((v - single.model.state_dict()[k]).abs().max().item() for k, v in init.items())
    assert moved > 100 * max(worst, 1e-7), (moved, worst)
    from mrimsm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "msm")
    assert ckpt["step"] == 3 and len(ckpt["rng"]["ranks"]) == 2


def test_torchrun_two_cpu_processes(tmp_path, prepared_measurements):
    """The README's `torchrun --nproc_per_node N -m mrimsm train CONFIG` end to end:
    two gloo processes, two steps, real shards, the projection skip."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    d = yaml.safe_load((repo / "configs" / "tiny.yaml").read_text())
    d["model"].update(model_channels=16, channel_mult=[1, 2])
    d["train"].update(batch_size=1, max_steps=2, log_every=1, sample_every=0)
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(d))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "mrimsm", "train",
         str(cfg), "--data", str(prepared_measurements), "--out", str(tmp_path / "run"), "-q", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, cwd=repo, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from mrimsm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["step"] == 2 and ckpt["rng"]["world_size"] == 2
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2
