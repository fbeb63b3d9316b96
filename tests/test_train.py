"""The generic training loop: resume reproduces the uninterrupted run, data order,
EMA, logs, previews; and MSM through the loop on tiny data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mrimsm.config import config_from_dict
from mrimsm.errors import MrimsmError
from mrimsm.methods import register_method
from mrimsm.methods import training_method as get_method
from mrimsm.train import EMA, StepBatchSampler, save_grid, train
from mrimsm.trainmethod import DataBundle, TrainMethod


# -- a toy method: noisy linear regression with dropout ------------------------------------


@dataclass
class ToyModelConfig:
    width: int = 16
    dropout: float = 0.2


class _ToyData(torch.utils.data.Dataset):
    def __init__(self, n: int = 24, dim: int = 6):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.randn(dim, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "index": i}


def _collate(items: list) -> dict:
    return {
        "x": torch.stack([it["x"] for it in items]),
        "y": torch.stack([it["y"] for it in items]),
        "index": torch.tensor([it["index"] for it in items]),
    }


@register_method("toy-train")
class ToyMethod(TrainMethod):
    config_sections = {"model": ToyModelConfig}

    @classmethod
    def build_dataset(cls, cfg, dist_info):
        return DataBundle(_ToyData(), _collate, {"num_examples": 24})

    def build_model(self, cfg):
        m = cfg.model
        return nn.Sequential(nn.Linear(6, m.width), nn.Dropout(m.dropout), nn.Tanh(), nn.Linear(m.width, 1))

    def loss(self, model, batch, generator):
        # the generator's noise and dropout both make the loss depend on the RNG state
        noise = 0.1 * torch.randn(batch["y"].shape, generator=generator, device=generator.device)
        err = model(batch["x"]) - (batch["y"] + noise)
        return err.square().mean(), {"abs_err": err.abs().mean()}

    def preview(self, model, batch, generator):
        return torch.rand(3, 8, 8, generator=generator) + 1j * torch.rand(3, 8, 8, generator=generator)

    def checkpoint_meta(self, cfg):
        return {"operator": "toy", "width": cfg.model.width}


def toy_config(**train) -> object:
    t = {"lr": 1e-2, "batch_size": 4, "max_steps": 8, "ckpt_every": 4, "log_every": 1, "ema": 0.9, "seed": 5}
    t.update(train)
    return config_from_dict(
        {"method": "toy-train", "data": {"root": "unused"}, "model": {}, "train": t}, source="toy.yaml"
    )


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


# -- resume ------------------------------------------------------------------------------


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    full = train(toy_config(), tmp_path / "full", progress=None, echo=lambda m: None)
    assert [s for s, _ in full.losses] == list(range(1, 9))

    part = train(toy_config(max_steps=4), tmp_path / "part", echo=lambda m: None)
    assert part.step == 4
    rest = train(toy_config(), tmp_path / "part", resume=True, echo=lambda m: None)
    assert rest.start_step == 4 and rest.step == 8
    # the same loss at every step (exact on CPU), the same final weights and EMA
    assert rest.losses == full.losses[4:]
    for a, b in zip(full.model.state_dict().values(), rest.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(full.ema.state_dict().values(), rest.ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r["loss"] for r in _log(tmp_path / "part")] == [r["loss"] for r in _log(tmp_path / "full")]


def test_resume_after_a_kill_mid_interval(tmp_path, monkeypatch):
    full = train(toy_config(), tmp_path / "full", echo=lambda m: None)

    real_loss = ToyMethod.loss

    def dying_loss(self, model, batch, generator):
        if batch["step"] == 6:  # killed while computing step 7, after the checkpoint of step 4
            raise KeyboardInterrupt
        return real_loss(self, model, batch, generator)

    monkeypatch.setattr(ToyMethod, "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        train(toy_config(), tmp_path / "killed", echo=lambda m: None)
    monkeypatch.setattr(ToyMethod, "loss", real_loss)
    assert len(_log(tmp_path / "killed")) == 6  # steps 5 and 6 were logged but not checkpointed

    rest = train(toy_config(), tmp_path / "killed", resume=True, echo=lambda m: None)
    assert rest.start_step == 4
    assert rest.losses == full.losses[4:]
    log = _log(tmp_path / "killed")
    assert [r["step"] for r in log] == list(range(1, 9))  # re-run steps replace the stale records
    assert [r["loss"] for r in log] == [r["loss"] for r in _log(tmp_path / "full")]


@pytest.mark.parametrize("moments", ["bf16", "drop"])
def test_resume_from_a_compact_bf16_state(tmp_path, moments):
    from mrimsm.checkpoint import compact_training_state, load_checkpoint

    full = train(toy_config(), tmp_path / "full", echo=lambda m: None)
    train(toy_config(max_steps=4), tmp_path / "part", echo=lambda m: None)
    (tmp_path / "small").mkdir()
    small = compact_training_state(tmp_path / "part", tmp_path / "small" / "last.pt", optimizer=moments)
    ckpt = load_checkpoint(small)
    assert ckpt["step"] == 4 and ckpt["compact"]["weights"] == "bfloat16"
    assert all(v.dtype == torch.bfloat16 for v in ckpt["model"].values() if v.is_floating_point() and v.dim())
    if moments == "bf16":
        assert all(t.dtype == torch.bfloat16 for st in ckpt["optimizer"]["state"].values()
                   for n, t in st.items() if n != "step")
    else:
        assert ckpt["optimizer"] is None
    msgs = []
    rest = train(toy_config(), tmp_path / "small", resume=True, echo=msgs.append)
    assert rest.start_step == 4 and rest.step == 8
    # bf16 rounding of weights (and moments) only: the resumed curve stays near the uninterrupted one
    got, want = np.array([v for _, v in rest.losses]), np.array([v for _, v in full.losses[4:]])
    np.testing.assert_allclose(got, want, rtol=0.1 if moments == "bf16" else 0.5)
    assert (moments == "drop") == any("re-warms" in m for m in msgs)
    with pytest.raises(MrimsmError, match="must not overwrite"):
        compact_training_state(small, small)


def test_other_seed_other_curve(tmp_path):
    a = train(toy_config(max_steps=3), tmp_path / "a", echo=lambda m: None)
    b = train(toy_config(max_steps=3, seed=6), tmp_path / "b", echo=lambda m: None)
    assert a.losses != b.losses


def test_refuses_to_overwrite_a_run(tmp_path):
    train(toy_config(max_steps=2), tmp_path / "r", echo=lambda m: None)
    with pytest.raises(MrimsmError, match="already holds a checkpoint"):
        train(toy_config(max_steps=2), tmp_path / "r", echo=lambda m: None)


def test_resume_uses_the_configs_learning_rate(tmp_path):
    """The optimizer state carries the old learning rate; the config's wins on resume (and
    says so), so lowering train.lr for a fine-tuning phase, or gpu_train.py --lr, works."""
    train(toy_config(max_steps=4), tmp_path / "r", echo=lambda m: None)
    msgs = []
    res = train(toy_config(lr=2.5e-3, max_steps=6), tmp_path / "r", resume=True, echo=msgs.append)
    assert res.start_step == 4 and [r["lr"] for r in _log(tmp_path / "r")][-1] == 2.5e-3
    assert any("train.lr 0.0025 replaces the checkpoint's 0.01" in m for m in msgs)
    msgs.clear()
    train(toy_config(lr=2.5e-3, max_steps=8), tmp_path / "r", resume=True, echo=msgs.append)
    assert not any("replaces" in m for m in msgs)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    msgs = []
    res = train(toy_config(max_steps=2), tmp_path / "r", resume=True, echo=msgs.append)
    assert res.start_step == 0 and res.step == 2
    assert any("starting from step 0" in m for m in msgs)


def test_resume_with_another_model_shape(tmp_path):
    train(toy_config(max_steps=2), tmp_path / "r", echo=lambda m: None)
    cfg = toy_config(max_steps=4)
    cfg = cfg.replace(**{"model.width": 8})
    with pytest.raises(MrimsmError, match="another shape"):
        train(cfg, tmp_path / "r", resume=True, echo=lambda m: None)


def test_checkpoint_contents(tmp_path):
    train(toy_config(max_steps=5, ckpt_every=2, keep_every=2), tmp_path / "r", echo=lambda m: None)
    from mrimsm.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "r")
    assert ckpt["step"] == 5 and ckpt["method"] == "toy-train"
    assert ckpt["meta"] == {"operator": "toy", "width": 16}
    assert ckpt["config"]["train"]["max_steps"] == 5
    assert ckpt["optimizer"]["state"]  # Adam moments are there
    assert ckpt["rng"]["ranks"][0]["sampler"]["steps_per_epoch"] == 6
    kept = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert kept == ["step_0000002.pt", "step_0000004.pt"]
    assert (tmp_path / "r" / "config.yaml").is_file()


def test_preview_grid_and_log_fields(tmp_path):
    train(toy_config(max_steps=4, sample_every=2, log_every=2), tmp_path / "r", echo=lambda m: None)
    pngs = sorted(p.name for p in (tmp_path / "r" / "samples").iterdir())
    assert pngs == ["step_0000002.png", "step_0000004.png"]
    log = _log(tmp_path / "r")
    assert [r["step"] for r in log] == [2, 4]
    assert {"loss", "abs_err", "grad_norm", "steps_per_s", "lr", "epoch"} <= set(log[0])


def test_nan_loss_is_a_clean_error(tmp_path, monkeypatch):
    def nan_loss(self, model, batch, generator):
        return model(batch["x"]).sum() * float("nan"), {}

    monkeypatch.setattr(ToyMethod, "loss", nan_loss)
    with pytest.raises(MrimsmError, match="loss became nan at step 1"):
        train(toy_config(max_steps=2), tmp_path / "r", echo=lambda m: None)


def test_progress_bar_factory_is_used(tmp_path):
    calls = []

    class Bar:
        def __init__(self, **kw):
            calls.append(kw)
            self.n = kw["initial"]

        def update(self, k):
            self.n += k

        def set_postfix(self, **kw):
            calls.append(kw)

        def close(self):
            calls.append("closed")

    train(toy_config(max_steps=3), tmp_path / "r", progress=Bar, echo=lambda m: None)
    assert calls[0] == {"total": 3, "initial": 0, "desc": "train"}
    assert "loss" in calls[1] and calls[-1] == "closed"


# -- pieces ------------------------------------------------------------------------------


def test_batch_order_is_seeded_resumable_and_splits_across_ranks():
    s = StepBatchSampler(10, 3, seed=1)
    assert s.steps_per_epoch == 3
    epoch0 = [s.indices(k) for k in range(3)]
    assert len(set(sum(epoch0, []))) == 9  # no repeats within an epoch
    assert [s.indices(k) for k in range(3)] == epoch0  # deterministic
    assert s.indices(3) != epoch0[0]  # a new permutation each epoch
    assert list(StepBatchSampler(10, 3, seed=1, start_step=4, max_steps=6)) == [s.indices(4), s.indices(5)]
    assert StepBatchSampler(10, 3, seed=2).indices(0) != epoch0[0]
    # two ranks with batch 2 see exactly the examples of one process with batch 4
    one = StepBatchSampler(10, 4, seed=1)
    r0 = StepBatchSampler(10, 2, seed=1, rank=0, world_size=2)
    r1 = StepBatchSampler(10, 2, seed=1, rank=1, world_size=2)
    for k in range(5):
        assert r0.indices(k) + r1.indices(k) == one.indices(k)
    with pytest.raises(MrimsmError, match="fewer than one batch"):
        StepBatchSampler(3, 4, seed=0)


def test_ema_update():
    model = nn.Linear(2, 1)
    ema = EMA(model, decay=0.5)
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=1000)  # decay_at = min(0.5, ...) = 0.5
    torch.testing.assert_close(ema.module.weight, before + 0.5)
    assert ema.decay_at(0) == pytest.approx(0.1)  # warm-up
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_save_grid(tmp_path):
    import matplotlib.image

    imgs = torch.randn(5, 8, 10, dtype=torch.complex64)
    save_grid(tmp_path / "g.png", imgs)
    arr = matplotlib.image.imread(tmp_path / "g.png")
    assert arr.shape[:2] == (2 * 10 + 2, 3 * 12 + 2)  # 2 rows x 3 columns with 2-pixel gaps
    save_grid(tmp_path / "rgb.png", torch.rand(2, 3, 8, 8))
    assert matplotlib.image.imread(tmp_path / "rgb.png").shape[:2] == (12, 22)


def test_unknown_method():
    with pytest.raises(MrimsmError, match="unknown method"):
        get_method("no-such-method")


# -- MSM through the loop, on tiny in-memory data --------------------------------------------


def _mri_items(n: int = 12, size: int = 32, coils: int = 4, accel: float = 4.0, rho: float = 0.0, seed: int = 0):
    """Items shaped like MeasurementDataset's: smooth complex images seen through
    smooth coil maps and one fixed paper-style mask each."""
    from mrimsm.physics.masks import PaperCartesian, column_mask_tensor
    from mrimsm.physics.operators import MultiCoilMRI

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    angles = torch.arange(coils) * 2 * np.pi / coils
    sens = torch.stack(
        [
            torch.exp(-((xx - 1.2 * torch.cos(a)) ** 2 + (yy - 1.2 * torch.sin(a)) ** 2) / 1.5)
            * torch.exp(1j * (a + xx))
            for a in angles
        ]
    ).to(torch.complex64)
    maps = sens / sens.abs().pow(2).sum(0, keepdim=True).sqrt()
    family = PaperCartesian(accel, center_lines=4)
    items = []
    for i in range(n):
        u = torch.rand(3, generator=g)
        cx, cy, r = (u * torch.tensor([0.6, 0.6, 0.3]) + torch.tensor([-0.3, -0.3, 0.4])).tolist()
        img = ((xx - cx) ** 2 + (yy - cy) ** 2 < r**2).float() * 0.7 + 0.3 * (xx.abs() < 0.8) * (yy.abs() < 0.8)
        x = (img / img.abs().max()).to(torch.complex64) * torch.exp(1j * 0.5 * (xx + yy))
        mask = column_mask_tensor(family((size, size), seed * 1000 + i))
        op = MultiCoilMRI(maps[None], mask)
        y = op(x[None].to(torch.complex64))[0]
        if rho > 0:
            noise = torch.randn(*y.shape, 2, generator=g)
            y = op.apply_mask((y + rho * torch.view_as_complex(noise))[None])[0]
        items.append({"y": y, "mask": mask[0], "maps": maps.clone(), "scale": 1.0, "index": i})
    return items


def _mri_collate(items):
    out = {k: torch.stack([it[k] for it in items]) for k in ("y", "mask", "maps")}
    out["scale"] = torch.tensor([it["scale"] for it in items])
    out["index"] = torch.tensor([it["index"] for it in items])
    return out


_MEM_RHO = {"value": 0.0}


def _register_memory_msm():
    from mrimsm.diffusion.method import MSMMethod

    @register_method("msm-mem")
    class MemoryMSM(MSMMethod):
        @classmethod
        def build_dataset(cls, cfg, dist_info):
            items = _mri_items(rho=_MEM_RHO["value"])
            info = {
                "num_examples": len(items), "example": items[0], "rho": _MEM_RHO["value"],
                "manifest": {"mask": {"kind": "paper", "accel": 4.0, "center_lines": 4}},
                "train_masks": torch.stack([it["mask"].reshape(-1) for it in items]).bool(),
            }
            return DataBundle(items, _mri_collate, info)

    return MemoryMSM


def msm_config(rho: float = 0.0, **train_kw):
    _register_memory_msm()
    _MEM_RHO["value"] = rho
    t = {"lr": 2e-3, "batch_size": 4, "max_steps": 4, "ckpt_every": 0, "log_every": 1, "seed": 0, "ema": 0.9}
    t.update(train_kw)
    return config_from_dict(
        {
            "method": "msm-mem",
            "data": {"root": "unused"},
            "model": {"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                      "attention_resolutions": [16], "num_head_channels": 16},
            "diffusion": {"rho": None, "train_steps": 50},
            "train": t,
            "sample": {"steps": 5, "preview_num": 2, "preview_steps": 3},
        },
        source="msm-mem.yaml",
    )


def test_msm_short_training_lowers_the_loss(tmp_path):
    from mrimsm.diffusion.losses import MSMLoss
    from mrimsm.diffusion.method import batch_operator
    from mrimsm.diffusion.schedule import VPSchedule

    items = _mri_items()
    batch = _mri_collate(items)
    op = batch_operator(batch)
    ts = torch.tensor([0, 100, 300, 500, 700, 850, 950, 999] + [200] * 4)
    loss_fn = MSMLoss(VPSchedule(), rho=0.0, train_steps=50)

    def held_loss(model):  # fixed steps and noise: only the weights change
        with torch.no_grad():
            return loss_fn(model, batch["y"], op, torch.Generator().manual_seed(99), t=ts)[0].item()

    cfg = msm_config(max_steps=40)
    from mrimsm.train import _INIT_STREAM, step_seed

    torch.manual_seed(step_seed(0, _INIT_STREAM, 0))
    method = get_method("msm-mem")(cfg, {"example": items[0], "rho": 0.0})
    before = held_loss(method.build_model(cfg))
    res = train(cfg, tmp_path / "r", echo=lambda m: None)
    after = held_loss(res.model)
    print(f"held-out MSM loss before {before:.4g} after {after:.4g}")
    assert after < 0.7 * before, (before, after)


def test_msm_noisy_loss_runs_with_bf16_autocast(tmp_path):
    # the CUDA mixed-precision path, exercised with CPU autocast: the physics stays complex64
    res = train(msm_config(rho=0.1, max_steps=2), tmp_path / "r", echo=lambda m: None, amp_dtype=torch.bfloat16)
    assert all(np.isfinite(v) for _, v in res.losses)


def test_cpu_bf16_autocast_follows_the_config(monkeypatch):
    from mrimsm import train as train_module
    from mrimsm.train import _amp_dtype

    cpu = torch.device("cpu")
    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: True)
    assert _amp_dtype(msm_config(), cpu) is None  # default: fp32 on CPU
    assert _amp_dtype(msm_config(cpu_bf16=True), cpu) == torch.bfloat16
    assert _amp_dtype(msm_config(cpu_bf16=True, amp=False), cpu) == torch.bfloat16  # amp is CUDA's switch


def test_cpu_bf16_falls_back_to_fp32_without_fast_kernels(tmp_path, monkeypatch):
    # an AVX2-only CPU emulates bf16 convolutions (tens of times slower than fp32): train in
    # fp32 and say so, instead of a silent 40x slowdown
    from mrimsm import train as train_module

    monkeypatch.setattr(train_module, "cpu_has_fast_bf16", lambda: False)
    assert train_module._amp_dtype(msm_config(cpu_bf16=True), torch.device("cpu")) is None
    said = []
    train(msm_config(cpu_bf16=True, max_steps=1), tmp_path / "r", echo=said.append)
    assert any("no fast bf16 kernels" in m and "fp32" in m for m in said)
    said.clear()
    train(msm_config(max_steps=1), tmp_path / "q", echo=said.append)  # fp32 by config: no note
    assert said and not any("no fast bf16 kernels" in m for m in said)


def test_training_with_flips_runs_and_differs(tmp_path):
    # data.flip_prob (mrimsm/data/augment.py): the flips change the batches, nothing else breaks
    a = train(msm_config(max_steps=2), tmp_path / "a", echo=lambda m: None)
    b = train(msm_config(max_steps=2).replace(**{"data.flip_prob": 1.0}), tmp_path / "b", echo=lambda m: None)
    assert all(np.isfinite(v) for _, v in b.losses)
    assert [v for _, v in a.losses] != [v for _, v in b.losses]


def test_flips_skip_the_examples_the_dataset_excludes(tmp_path, monkeypatch):
    # a dataset that knows its acquisitions says which examples may flip (data.flip_exclude)
    import mrimsm.data.augment as augment

    seen, real = [], augment.flip_batch

    def spy(batch, prob, generator, allowed=None):
        seen.append((batch["index"].clone(), allowed))
        return real(batch, prob, generator, allowed)

    monkeypatch.setattr(augment, "flip_batch", spy)
    cfg = msm_config(max_steps=2).replace(**{"data.flip_prob": 1.0})
    cls = get_method("msm-mem")
    build = cls.build_dataset.__func__

    class Items(list):
        def flippable(self, exclude):
            assert list(exclude) == ["SAG"]
            return np.array([i % 2 == 0 for i in range(len(self))])

    def with_acquisitions(klass, c, info):
        bundle = build(klass, c, info)
        return DataBundle(Items(bundle.dataset), bundle.collate, bundle.info)

    monkeypatch.setattr(cls, "build_dataset", classmethod(with_acquisitions))
    train(cfg, tmp_path / "a", echo=lambda m: None)
    assert len(seen) == 2 and all(torch.equal(allowed, index % 2 == 0) for index, allowed in seen)


def test_msm_checkpoint_samples_and_preview(tmp_path):
    from mrimsm.inference import generate, load_msm
    from mrimsm.physics.masks import training_mask_family

    train(msm_config(max_steps=2, sample_every=2), tmp_path / "r", echo=lambda m: None)
    assert (tmp_path / "r" / "samples" / "step_0000002.png").is_file()
    loaded = load_msm(tmp_path / "r")
    meta = loaded.meta
    assert meta["operator"] == "MultiCoilMRI" and meta["image_shape"] == [32, 32] and meta["num_coils"] == 4
    assert meta["mask"] == {"kind": "paper", "accel": 4.0, "center_lines": 4}
    assert meta["reference_maps"].shape == (4, 32, 32) and meta["train_masks"].shape == (12, 32)
    assert training_mask_family(meta).center_lines == 4
    x = generate(loaded, 3, steps=4, w=2, seed=1, batch_size=2)
    assert x.shape == (3, 32, 32) and x.dtype == torch.complex64
    assert torch.isfinite(torch.view_as_real(x)).all()
    # the scale of the data: max |x| = 1 images; samples of an untrained prior stay within a decade
    assert 0.05 < x.abs().amax(dim=(-2, -1)).mean().item() < 10
    again = generate(loaded, 3, steps=4, w=2, seed=1, batch_size=2)
    assert torch.equal(x, again)
    assert not torch.equal(x, generate(loaded, 3, steps=4, w=2, seed=2, batch_size=2))


def test_msm_rho_follows_the_data_unless_set():
    items = _mri_items(n=2)
    cfg = msm_config()
    method_cls = get_method("msm-mem")
    assert method_cls(cfg, {"example": items[0], "rho": 0.05}).rho == pytest.approx(0.05)
    explicit = cfg.replace(**{"diffusion.rho": 0.1})
    with pytest.warns(UserWarning, match="the data's noise is 0.05"):
        assert method_cls(explicit, {"example": items[0], "rho": 0.05}).rho == pytest.approx(0.1)
    # a measured noise within 5 % of the configured rho is the same level: no warning
    import warnings as _w
    with _w.catch_warnings():
        _w.simplefilter("error")
        assert method_cls(explicit, {"example": items[0], "rho": 0.103}).rho == pytest.approx(0.1)
    with pytest.raises(MrimsmError, match="set diffusion.rho"):
        method_cls(cfg, {"example": items[0]})


def test_msm_resume_reproduces_the_loss_curve(tmp_path):
    full = train(msm_config(rho=0.1, max_steps=4, ckpt_every=2), tmp_path / "full", echo=lambda m: None)
    train(msm_config(rho=0.1, max_steps=2, ckpt_every=2), tmp_path / "part", echo=lambda m: None)
    rest = train(msm_config(rho=0.1, max_steps=4, ckpt_every=2), tmp_path / "part", resume=True,
                 echo=lambda m: None)
    assert rest.start_step == 2
    assert rest.losses == full.losses[2:]  # bit-identical on CPU
    for a, b in zip(full.ema.state_dict().values(), rest.ema.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_msm_skip_is_kept_on_resume_and_legacy_checkpoints_load_as_image_skip(tmp_path):
    from mrimsm.checkpoint import load_checkpoint, save_checkpoint
    from mrimsm.inference import load_msm

    cfg = msm_config(max_steps=2, ckpt_every=2)
    assert cfg.diffusion.skip == "projection"  # the default for new models
    train(cfg, tmp_path / "r", echo=lambda m: None)
    assert load_msm(tmp_path / "r").denoiser.skip == "projection"
    other = msm_config(max_steps=4, ckpt_every=2).replace(**{"diffusion.skip": "image"})
    with pytest.raises(MrimsmError, match="diffusion.skip: projection"):
        train(other, tmp_path / "r", resume=True, echo=lambda m: None)
    # a checkpoint written before the option existed: no diffusion.skip in its config
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    ckpt["config"]["diffusion"].pop("skip")
    save_checkpoint(tmp_path / "legacy.pt", **ckpt)
    assert load_msm(tmp_path / "legacy.pt").denoiser.skip == "image"
