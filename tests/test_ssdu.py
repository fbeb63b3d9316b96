"""SSDU baseline: Theta / Lambda split through the training code path, loss, training."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from mrimsm.baselines import ssdu
from mrimsm.baselines.ssdu import (
    SSDUModelConfig,
    SSDUSplitConfig,
    build_unrolled,
    heldout_loss,
    split_batch,
    split_seed,
    ssdu_kspace_loss,
    ssdu_reconstruct,
    ssdu_step_loss,
)
from mrimsm.errors import MrimsmError
from mrimsm.physics.masks import PaperCartesian
from mrimsm.physics.operators import MultiCoilMRI

# -- tiny simulated multi-coil data (no file I/O, no sigpy: fast) -------------------


def _phantom(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random sum of ellipses with a smooth linear phase, max |x| = 1, ``(n, n)`` complex64."""
    yy, xx = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    img = np.zeros((n, n))
    for _ in range(rng.integers(3, 6)):
        cx, cy = rng.uniform(-0.4, 0.4, 2)
        a, b = rng.uniform(0.15, 0.6, 2)
        th = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        img[(u / a) ** 2 + (v / b) ** 2 <= 1] += rng.uniform(0.2, 1.0)
    img = img * np.exp(1j * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy))
    return (img / np.abs(img).max()).astype(np.complex64)


def _coil_maps(n: int, c: int) -> np.ndarray:
    """Smooth maps around a ring, normalised so sum_c |C_c|^2 = 1, ``(c, n, n)`` complex64."""
    yy, xx = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    maps = []
    for k in range(c):
        ang = 2 * np.pi * k / c
        px, py = 1.3 * np.cos(ang), 1.3 * np.sin(ang)
        mag = np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / 1.5)
        maps.append(mag * np.exp(1j * 0.5 * (xx * np.cos(ang) + yy * np.sin(ang))))
    maps = np.stack(maps)
    return (maps / np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))).astype(np.complex64)


def _dataset(num: int, seed: int, n: int = 32, coils: int = 4, rho: float = 0.01) -> list[dict]:
    """Items shaped like MeasurementDataset's: y (C, H, W), mask (1, 1, W), maps, index."""
    rng = np.random.default_rng(seed)
    maps = torch.from_numpy(_coil_maps(n, coils))
    family = PaperCartesian(4, center_lines=4)
    items = []
    for i in range(num):
        x = torch.from_numpy(_phantom(rng, n))
        mask = torch.from_numpy(family((n, n), seed * 1000 + i)).float().view(1, 1, n)
        y = MultiCoilMRI(maps[None], mask[None])(x[None])[0]
        noise = (rng.standard_normal((2,) + tuple(y.shape)) * rho / np.sqrt(2)).astype(np.float32)
        y = y + torch.complex(torch.from_numpy(noise[0]), torch.from_numpy(noise[1])) * mask
        items.append({"y": y, "mask": mask, "maps": maps, "scale": 1.0, "index": i, "reference": x})
    return items


def _collate(items: list[dict]) -> dict:
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else torch.tensor(vals)
    return out


# -- split ----------------------------------------------------------------------------


def _batch_masks(b: int = 6, w: int = 64, seed: int = 0) -> torch.Tensor:
    fam = PaperCartesian(4, center_lines=5)
    return torch.stack([torch.from_numpy(fam((w, w), seed + i)) for i in range(b)]).float()[:, None, None, :]


@pytest.mark.parametrize("granularity", ["lines", "points"])
@pytest.mark.parametrize("method", ["gaussian", "uniform"])
def test_split_is_disjoint_and_covers_the_mask(granularity, method):
    mask = _batch_masks()
    cfg = SSDUSplitConfig(granularity=granularity, method=method, seed=3)
    theta, lam = split_batch(mask, range(6), cfg, epoch=2, height=48)
    full = mask.expand(-1, -1, 48, -1) if granularity == "points" else mask
    assert theta.shape == full.shape and lam.shape == full.shape
    assert torch.all(theta * lam == 0)  # disjoint
    torch.testing.assert_close(theta + lam, full)  # union = acquisition mask
    frac = lam.sum((1, 2, 3)) / full.sum((1, 2, 3))
    assert torch.all((frac - 0.4).abs() < 0.06), frac


@pytest.mark.parametrize("granularity", ["lines", "points"])
def test_split_keeps_center_in_theta(granularity):
    mask = _batch_masks(b=20, w=64)
    cfg = SSDUSplitConfig(granularity=granularity, center_size=4, seed=0)
    theta, lam = split_batch(mask, range(20), cfg, epoch=0, height=64)
    c = 32
    # ssdu_split protects |k - c| < center_size / 2 along each split axis: k in c-1..c+1
    if granularity == "lines":
        center_lam, center_theta = lam[..., c - 1 : c + 2], theta[..., c - 1 : c + 2]
    else:
        center_lam, center_theta = lam[..., c - 1 : c + 2, c - 1 : c + 2], theta[..., c - 1 : c + 2, c - 1 : c + 2]
    assert torch.all(center_lam == 0) and torch.all(center_theta == 1)
    # and without the protection the centre does get drawn into Lambda (the check can fail)
    _, lam0 = split_batch(mask, range(20), SSDUSplitConfig(granularity=granularity, center_size=0), 0, 64)
    assert lam0[..., c - 1 : c + 2].sum() > 0


def test_gaussian_split_prefers_low_frequencies():
    w = 128
    mask = torch.ones(200, 1, 1, w)
    lam_g = split_batch(mask, range(200), SSDUSplitConfig(method="gaussian"), 0, w)[1].mean((0, 1, 2))
    lam_u = split_batch(mask, range(200), SSDUSplitConfig(method="uniform"), 0, w)[1].mean((0, 1, 2))
    inner = slice(w // 2 - 16, w // 2 + 16)
    edge = torch.cat([lam_g[:16], lam_g[-16:]]).mean()
    assert lam_g[inner].mean() > 2 * edge
    assert abs(lam_u[inner].mean() - torch.cat([lam_u[:16], lam_u[-16:]]).mean()) < 0.15


def test_split_is_fresh_per_epoch_and_example_but_reproducible():
    mask = torch.ones(1, 1, 1, 64)
    cfg = SSDUSplitConfig(seed=7)
    a = split_batch(mask, [5], cfg, epoch=1, height=64)[1]
    b = split_batch(mask, [5], cfg, epoch=1, height=64)[1]
    assert torch.equal(a, b)
    assert not torch.equal(a, split_batch(mask, [5], cfg, epoch=2, height=64)[1])
    assert not torch.equal(a, split_batch(mask, [6], cfg, epoch=1, height=64)[1])
    assert not torch.equal(a, split_batch(mask, [5], SSDUSplitConfig(seed=8), epoch=1, height=64)[1])
    # the split of an example does not depend on its batch neighbours
    c = split_batch(torch.ones(3, 1, 1, 64), [9, 5, 2], cfg, epoch=1, height=64)[1]
    assert torch.equal(c[1:2], a)
    assert split_seed(7, 1, 5) == split_seed(7, 1, 5) != split_seed(7, 5, 1)


def test_split_config_validation():
    """The SSDU sections are typed like every other section: their annotations give the
    ranges and choices, so a bad value names its key and what it must be."""
    from mrimsm.settings import SettingError, validate_dataclass

    for bad, want in (({"loss_ratio": 1.0}, "loss_ratio: must be in (0, 1)"),
                      ({"method": "poisson"}, "method: must be gaussian or uniform"),
                      ({"granularity": "rows"}, "granularity: must be lines or points"),
                      ({"center_size": -1}, "center_size: must be >= 0"),
                      ({"std_scale": 0}, "std_scale: must be > 0")):
        with pytest.raises(SettingError) as exc:
            validate_dataclass(SSDUSplitConfig, bad)
        assert str(exc.value).startswith(want), str(exc.value)
    assert validate_dataclass(SSDUSplitConfig, {"seed": 3}) == SSDUSplitConfig(seed=3)
    for bad, want in (({"num_unrolls": 0}, "num_unrolls: must be >= 1"), ({"kernel_size": 4}, "kernel_size: must be odd"),
                      ({"mu_init": 0}, "mu_init: must be > 0"), ({"cg_tol": -1}, "cg_tol: must be >= 0"),
                      ({"num_blocks": -1}, "num_blocks: must be >= 0")):
        with pytest.raises(MrimsmError, match="bad ssdu model settings: " + re.escape(want)):
            build_unrolled(bad)
    with pytest.raises(MrimsmError, match="bogus"):
        build_unrolled({"bogus": 1})


# -- loss -----------------------------------------------------------------------------


def test_kspace_loss_definition():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(2, 3, 4, 5, dtype=torch.complex64, generator=gen)
    p = torch.randn(2, 3, 4, 5, dtype=torch.complex64, generator=gen)
    loss = ssdu_kspace_loss(p, t)
    assert loss.shape == (2,)
    d, tr = torch.view_as_real(p - t)[0], torch.view_as_real(t)[0]
    expected = d.norm() / tr.norm() + d.abs().sum() / tr.abs().sum()
    torch.testing.assert_close(loss[0], expected)
    assert torch.allclose(ssdu_kspace_loss(t, t), torch.zeros(2))
    torch.testing.assert_close(ssdu_kspace_loss(3 * p, 3 * t), loss)  # scale invariant
    torch.testing.assert_close(ssdu_kspace_loss(torch.zeros_like(t), t), torch.full((2,), 2.0))


def test_step_loss_uses_only_lambda_for_the_loss_and_theta_for_the_input():
    """Changing y on Lambda changes the loss but not the network output; changing
    it off the acquisition mask changes nothing."""
    items = _dataset(2, seed=0)
    b = _collate(items)
    cfg = SSDUSplitConfig(seed=0)
    theta, lam = split_batch(b["mask"], b["index"], cfg, 0, 32)
    torch.manual_seed(0)
    net = build_unrolled(SSDUModelConfig(num_unrolls=2, num_blocks=1, channels=4, cg_iters=3))
    captured = []
    net.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    with torch.no_grad():
        l0, logs = ssdu_step_loss(net, b["y"], b["maps"], b["mask"], b["index"], cfg, 0)
        y_lam = b["y"] + 0.3 * lam
        l1, _ = ssdu_step_loss(net, y_lam, b["maps"], b["mask"], b["index"], cfg, 0)
        y_off = b["y"] + 5.0 * (1 - b["mask"])
        l2, _ = ssdu_step_loss(net, y_off, b["maps"], b["mask"], b["index"], cfg, 0)
    assert not torch.isclose(l0, l1)
    torch.testing.assert_close(captured[0], captured[1])
    torch.testing.assert_close(l0, l2)
    assert 0.25 < logs["lambda_frac"] < 0.55 and logs["mu"] > 0


def test_reconstruct_uses_all_acquired_lines():
    b = _collate(_dataset(2, seed=1))
    torch.manual_seed(0)
    net = build_unrolled(SSDUModelConfig(num_unrolls=1, num_blocks=1, channels=4, mu_init=1e-4, cg_iters=50))
    x = ssdu_reconstruct(net, b["y"], b["maps"], b["mask"])
    assert x.shape == (2, 32, 32) and x.dtype == torch.complex64
    op = MultiCoilMRI(b["maps"], b["mask"])
    # tiny mu: the data-consistency block fits every acquired line
    assert (op(x) - b["y"]).norm() / b["y"].norm() < 0.05


# -- training ------------------------------------------------------------------------


def test_tiny_training_lowers_heldout_kspace_loss():
    """40 Adam steps on 32 simulated 32 x 32 scans lower the k-space loss of 8 unseen scans,
    and their reconstructions beat zero-filled against the reference images."""
    torch.manual_seed(0)
    train = _dataset(32, seed=0)
    held = [_collate(_dataset(8, seed=1))]
    split = SSDUSplitConfig(seed=0)
    net = build_unrolled(SSDUModelConfig(num_unrolls=3, num_blocks=2, channels=16, cg_iters=5))
    untrained = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = heldout_loss(net, held, split, epoch=10**6)
    order = np.random.default_rng(0)
    step = 0
    for epoch in range(5):
        perm = order.permutation(len(train))
        for s in range(0, len(train), 4):
            b = _collate([train[i] for i in perm[s : s + 4]])
            loss, _ = ssdu_step_loss(net, b["y"], b["maps"], b["mask"], b["index"], split, epoch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    after = heldout_loss(net, held, split, epoch=10**6)
    assert step == 40
    assert after < 0.9 * before, (before, after)

    # and the reconstruction of the unseen scans (every acquired line in) is closer to
    # their reference images than zero-filled, and closer than before training
    b = held[0]

    def err(x: torch.Tensor) -> float:  # relative error of the magnitude images
        return float((x.abs() - b["reference"].abs()).norm() / b["reference"].abs().norm())

    zero_filled = MultiCoilMRI(b["maps"], b["mask"]).adjoint(b["y"])
    e_zf, e_ssdu = err(zero_filled), err(ssdu_reconstruct(net, b["y"], b["maps"], b["mask"]))
    e_init = err(ssdu_reconstruct(untrained, b["y"], b["maps"], b["mask"]))
    print(f"held-out magnitude error: zero-filled {e_zf:.3f}, untrained {e_init:.3f}, SSDU {e_ssdu:.3f}")
    assert e_ssdu < 0.8 * e_zf, (e_ssdu, e_zf)
    assert e_ssdu < e_init, (e_ssdu, e_init)


# -- through the shared training loop ------------------------------------------------


def _toy_bundle(num: int = 8):
    from mrimsm.trainmethod import DataBundle

    items = [{k: v for k, v in it.items() if k != "reference"} for it in _dataset(num, seed=2)]
    info = {"root": "<toy>", "split": "train", "num_examples": num, "example": items[0], "rho": 0.01}
    return DataBundle(items, _collate, info)


def _toy_config(max_steps: int = 6):
    from mrimsm.config import config_from_dict

    raw = {
        "method": "ssdu",
        "data": {"root": "<toy>"},
        "model": {"num_unrolls": 2, "num_blocks": 1, "channels": 8, "cg_iters": 3},
        "split": {"seed": None},
        "train": {"lr": 1e-3, "batch_size": 2, "max_steps": max_steps, "ema": 0.0, "grad_clip": 0.0,
                  "ckpt_every": 3, "log_every": 1, "sample_every": 3, "seed": 5, "amp": False},
    }
    return config_from_dict(raw, source="toy.yaml")


def test_trains_through_the_shared_loop_and_loads_back(tmp_path, monkeypatch):
    from mrimsm.baselines.ssdu import SSDUMethod
    from mrimsm.inference import load_ssdu
    from mrimsm.train import train

    monkeypatch.setattr(SSDUMethod, "build_dataset", classmethod(lambda cls, cfg, dist: _toy_bundle()))
    cfg = _toy_config()
    result = train(cfg, tmp_path / "run", device="cpu", echo=lambda _m: None)
    assert result.step == 6 and all(np.isfinite(l) for _, l in result.losses)
    assert (tmp_path / "run" / "samples" / "step_0000003.png").is_file()
    loaded = load_ssdu(tmp_path / "run")
    assert loaded.step == 6 and loaded.meta["split"]["seed"] == 5  # null -> train.seed
    assert loaded.meta["image_shape"] == [32, 32] and loaded.meta["num_coils"] == 4
    b = _collate(_dataset(2, seed=3))
    x = loaded.reconstruct(b["y"], b["maps"], b["mask"])
    with torch.no_grad():
        ref = result.model.eval()(MultiCoilMRI(b["maps"], b["mask"]).apply_mask(b["y"]), MultiCoilMRI(b["maps"], b["mask"]))
    torch.testing.assert_close(x, ref)  # ema 0: the loaded weights are the trained ones

    # the recon pipeline's plug-in gives the same images
    from mrimsm import recon

    method = recon.get_method("ssdu").build({"ssdu_checkpoint": str(tmp_path / "run"), "device": "cpu"})
    batch = recon.SliceBatch(kspace=b["y"], mask=b["mask"], maps=b["maps"], slice_indices=[0, 1], seeds=[0, 1])
    out = method.reconstruct(batch)
    torch.testing.assert_close(out.images, ref)
    assert out.info["nfe_per_slice"] == 2 and recon.get_method("ssdu").needs_normalization


def test_resume_repeats_the_uninterrupted_run(tmp_path, monkeypatch):
    """Splits depend on (seed, epoch, index) only: a resumed run has the same losses."""
    from mrimsm.baselines.ssdu import SSDUMethod
    from mrimsm.train import train

    monkeypatch.setattr(SSDUMethod, "build_dataset", classmethod(lambda cls, cfg, dist: _toy_bundle()))
    full = train(_toy_config(6), tmp_path / "a", device="cpu", echo=lambda _m: None)
    train(_toy_config(3), tmp_path / "b", device="cpu", echo=lambda _m: None)
    rest = train(_toy_config(6), tmp_path / "b", resume=True, device="cpu", echo=lambda _m: None)
    assert [s for s, _ in rest.losses] == [4, 5, 6]
    np.testing.assert_allclose([l for _, l in rest.losses], [l for _, l in full.losses[3:]], rtol=1e-5)


def test_load_rejects_other_checkpoints(tmp_path, monkeypatch):
    from mrimsm import recon
    from mrimsm.inference import load_ssdu

    from mrimsm.diffusion import shipped

    monkeypatch.setattr(shipped, "ASSETS", tmp_path)  # no shipped SSDU installed
    with pytest.raises(MrimsmError, match="no SSDU checkpoint"):
        recon.get_method("ssdu").build({})

    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MrimsmError):
        load_ssdu(bad)
    with pytest.raises(MrimsmError):
        load_ssdu(tmp_path / "missing")
    from mrimsm.checkpoint import save_checkpoint

    other = save_checkpoint(tmp_path / "msm.pt", method="msm", step=0, config={}, meta={}, model={}, ema={})
    with pytest.raises(MrimsmError, match="not an ssdu one"):
        load_ssdu(other)


def test_cli_rejects_bad_ssdu_configs_in_one_line(tmp_path, capsys):
    from mrimsm.cli.main import main

    def write(model: str = "{channels: 4}", split: str = "{}", name: str = "cfg") -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            "method: ssdu\ndata: {root: nowhere}\ntrain: {lr: 1e-3, batch_size: 1, max_steps: 1}\n"
            f"model: {model}\nsplit: {split}\n"
        )
        return str(path)

    run = str(tmp_path / "run")
    bad = {
        "unknown key": write(model="{channels: 4, bogus: 1}", name="a"),
        "channels": write(model="{channels: 0}", name="b"),
        "loss_ratio": write(split="{loss_ratio: 1.5}", name="c"),
        "granularity": write(split="{granularity: rows}", name="d"),
    }
    for expected, path in bad.items():
        assert main(["train", "--method", "ssdu", path, "--out", run]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and "Traceback" not in err, err
    # an msm config asked to train as ssdu
    assert main(["train", "--method", "ssdu", "configs/tiny.yaml", "--out", run]) == 2
    assert "method 'msm'" in capsys.readouterr().err
    # a valid config gets as far as the (missing) data
    assert main(["train", "--method", "ssdu", write(), "--out", run]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_recon_pipeline_runs_ssdu_on_a_fastmri_file(tmp_path, monkeypatch):
    """`reconstruct_file(..., ["zero-filled", "ssdu"])` on a simulated fastMRI file (true maps
    instead of ESPIRiT): fastMRI-layout outputs with the reference's size and metrics."""
    import h5py

    from mrimsm import recon
    from mrimsm.baselines.ssdu import SSDUMethod
    from mrimsm.data.fastmri_io import crop_to_reconstruction
    from mrimsm.data.simulate import birdcage_coil_maps, simulate_volume_file
    from mrimsm.train import train

    monkeypatch.setattr(SSDUMethod, "build_dataset", classmethod(lambda cls, cfg, dist: _toy_bundle()))
    train(_toy_config(2), tmp_path / "run", device="cpu", echo=lambda _m: None)

    def true_maps(kspace, mask):
        s, c, h, w = kspace.shape
        maps = birdcage_coil_maps(c, (2 * h, w), object_shape=(h, w))
        return np.repeat(crop_to_reconstruction(maps, (h, w))[None], s, 0)

    src = simulate_volume_file(tmp_path / "in.h5", "axial", [80, 82], 32, 4, 0.01, True, 0)
    report = recon.reconstruct_file(
        src, tmp_path / "out", ["zero-filled", "ssdu"], accel=4, seed=0,
        options={"ssdu_checkpoint": str(tmp_path / "run")}, maps_fn=true_maps,
    )
    res = {r.method: r for r in report.results}
    assert res["ssdu"].reconstruction.shape == (2, 32, 32)
    assert np.isfinite(res["ssdu"].metrics["psnr"]) and np.isfinite(res["ssdu"].metrics["ssim_slice"])
    assert res["ssdu"].info["nfe_per_slice"] == 2
    with h5py.File(report.outputs["ssdu"]) as f:
        assert f["reconstruction"].shape == (2, 32, 32)
