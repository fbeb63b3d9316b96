"""`mrimsm restore`: box inpainting and 4x super-resolution through the MSM posterior solver."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mrimsm.errors import MrimsmError
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)
    return path


def _smooth_image(size: int, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8: smooth colour gradients plus a little texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    chans = [np.sin(2 * np.pi * (a * xx + b * yy) + c) for a, b, c in rng.uniform(0.3, 1.5, (3, 3))]
    img = 0.5 + 0.35 * np.stack(chans, -1) + 0.05 * rng.standard_normal((size, size, 3))
    return np.clip(img * 255, 0, 255)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """An untrained (randomised output layer) 16 x 16 RGB msm-images checkpoint."""
    from mrimsm import distributed
    from mrimsm.checkpoint import save_checkpoint
    from mrimsm.config import load_config
    from mrimsm.methods import training_method as get_method

    base = tmp_path_factory.mktemp("restore_ckpt")
    for i in range(2):
        _save(base / "imgs" / f"{i}.png", _smooth_image(16, i))
    cfg = load_config(REPO / "configs" / "ffhq_tiny.yaml").replace(**{
        "data.root": str(base / "imgs"), "images.size": 16, "model.model_channels": 8,
        "model.channel_mult": [1, 2], "model.attention_resolutions": [], "model.num_head_channels": 8,
    })
    method_cls = get_method("msm-images")
    bundle = method_cls.build_dataset(cfg, distributed.init())
    method = method_cls(cfg, bundle.info)
    torch.manual_seed(0)
    model = method.build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:  # the zero-initialised output layer: make the net do something
                p.normal_(0, 0.05)
    state = model.state_dict()
    return save_checkpoint(
        base / "tiny.pt", method="msm-images", step=0, config=cfg.to_dict(), meta=method.checkpoint_meta(cfg),
        model=state, ema=state, optimizer=None, scaler=None, rng=None,
    )


@pytest.fixture(scope="module")
def loaded(tiny_ckpt):
    from mrimsm.inference import load_msm

    return load_msm(tiny_ckpt)


def _settings(**kw):
    from mrimsm.restore import image_settings

    return image_settings(**{"steps": 3, "w": 1, "samples": 1, **kw})


# -- operators, degradation, baselines, metrics -----------------------------------------


def test_task_operators():
    from mrimsm.physics.operators import BoxMask, Downsample
    from mrimsm.restore import task_operator

    box = task_operator("inpaint-box", (32, 32))
    assert isinstance(box, BoxMask) and box.box == (8, 8, 16, 16)
    m = box.mask[0, 0]
    assert m.sum() == 32 * 32 - 16 * 16 and m[8:24, 8:24].sum() == 0
    sr = task_operator("sr4", (32, 32))
    assert isinstance(sr, Downsample) and sr.factor == 4
    with pytest.raises(MrimsmError, match="not divisible by 4"):
        task_operator("sr4", (30, 32))
    with pytest.raises(MrimsmError, match="unknown task"):
        task_operator("denoise", (32, 32))


def test_degrade_and_baselines():
    from mrimsm.restore import baseline, degrade

    clean = torch.rand(3, 16, 16) * 2 - 1
    y = degrade(clean, "inpaint-box", noise=0.0)
    assert torch.all(y[:, 4:12, 4:12] == 0) and torch.equal(y[:, :4], clean[:, :4])
    noisy = degrade(clean, "inpaint-box", noise=0.05, seed=1)
    assert torch.all(noisy[:, 4:12, 4:12] == 0) and 0.03 < float((noisy - y)[:, :4].std()) < 0.07
    assert torch.equal(noisy, degrade(clean, "inpaint-box", noise=0.05, seed=1))
    filled = baseline(y, "inpaint-box")
    observed = torch.ones(16, 16, dtype=torch.bool)
    observed[4:12, 4:12] = False
    for c in range(3):
        assert torch.allclose(filled[c, 4:12, 4:12], clean[c][observed].mean().expand(8, 8), atol=1e-6)
    assert torch.equal(filled[:, observed], clean[:, observed])

    small = degrade(clean, "sr4")
    assert small.shape == (3, 4, 4)
    assert torch.allclose(small, clean.reshape(3, 4, 4, 4, 4).mean((2, 4)), atol=1e-6)
    up = baseline(torch.full((3, 4, 4), 0.3), "sr4")
    assert up.shape == (3, 16, 16) and torch.allclose(up, torch.tensor(0.3), atol=1e-6)


def test_image_metrics():
    from mrimsm.restore import image_metrics

    clean = torch.rand(3, 16, 16) - 0.5  # inside [-1, 1]: no clipping
    same = image_metrics(clean, clean)
    assert same["psnr"] == float("inf") and same["ssim"] == pytest.approx(1.0)
    off = image_metrics(clean, clean + 0.2)  # 0.1 in [0, 1] units: PSNR = 20 dB
    assert off["psnr"] == pytest.approx(20.0, abs=1e-6) and off["ssim"] < 1.0


# -- the posterior solver on images --------------------------------------------------------


def test_box_restoration_keeps_observed_pixels_and_uncertainty_sits_in_the_box(loaded):
    from mrimsm.restore import degrade, restore_observation

    clean = torch.from_numpy(_smooth_image(16, 5).transpose(2, 0, 1) / 127.5 - 1).float()
    y = degrade(clean, "inpaint-box")
    out = restore_observation(loaded, y, "inpaint-box", _settings(samples=3), seed=0)
    assert out.image.shape == (3, 16, 16) and out.samples.shape == (3, 3, 16, 16)
    observed = torch.ones(16, 16, dtype=torch.bool)
    observed[4:12, 4:12] = False
    assert torch.allclose(out.samples[:, :, observed], y[:, observed].expand(3, -1, -1), atol=1e-5)
    assert out.std is not None and out.std.shape == (3, 16, 16)
    assert float(out.std[:, observed].max()) < 1e-5 < float(out.std[:, ~observed].mean())


def test_sr_restoration_is_consistent_and_seeded(loaded):
    from mrimsm.physics.operators import Downsample
    from mrimsm.restore import restore_observation

    y = torch.rand(3, 4, 4) - 0.5
    a = restore_observation(loaded, y, "sr4", _settings(), seed=3)
    b = restore_observation(loaded, y, "sr4", _settings(), seed=3)
    c = restore_observation(loaded, y, "sr4", _settings(), seed=4)
    assert a.image.shape == (3, 16, 16) and a.std is None and a.baseline.shape == (3, 16, 16)
    assert torch.allclose(Downsample(4)(a.samples[0]), y, atol=1e-5)  # exact data consistency
    assert torch.equal(a.image, b.image) and not torch.equal(a.image, c.image)


def test_solver_refuses_mismatches(loaded):
    from mrimsm.restore import restore_observation, simulate_restoration

    with pytest.raises(MrimsmError, match="grayscale but the model"):
        restore_observation(loaded, torch.zeros(1, 16, 16), "inpaint-box", _settings())
    with pytest.raises(MrimsmError, match="not divisible by 2"):
        simulate_restoration(loaded, torch.zeros(3, 15, 16), "inpaint-box", _settings())


def test_evaluate_folder_scores_every_image(loaded, tmp_path):
    from mrimsm.restore import evaluate_folder, image_metrics

    for i in range(3):
        _save(tmp_path / f"{i}.png", _smooth_image(32, i))  # resized to the model's 16 x 16
    (tmp_path / "readme.txt").write_text("x")
    res = evaluate_folder(loaded, tmp_path, "inpaint-box", _settings(steps=2), limit=2)
    assert res["names"] == ["0.png", "1.png"]
    assert len(res["msm"]["psnr"]) == 2 and len(res["mean-fill"]["ssim"]) == 2
    assert res["mean"]["mean-fill"]["psnr"] == pytest.approx(np.mean(res["mean-fill"]["psnr"]))
    # the baseline score is the mean fill of the resized image, recomputed here
    from mrimsm.data.images import center_crop_resize, read_image, to_model_range
    from mrimsm.restore import baseline, degrade

    x = torch.from_numpy(to_model_range(center_crop_resize(read_image(tmp_path / "0.png"), 16)))
    expect = image_metrics(x, baseline(degrade(x, "inpaint-box"), "inpaint-box"))["psnr"]
    assert res["mean-fill"]["psnr"][0] == pytest.approx(expect, abs=1e-6)
    with pytest.raises(MrimsmError, match="not a directory"):
        evaluate_folder(loaded, tmp_path / "missing", "inpaint-box", _settings(steps=2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MrimsmError, match="no PNG/JPEG"):
        evaluate_folder(loaded, tmp_path / "empty", "inpaint-box", _settings(steps=2))


# -- the command line ---------------------------------------------------------------------


def _run(args, capsys):
    from mrimsm.cli.main import main

    rc = main(["restore", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_simulate_box_writes_all_outputs(tiny_ckpt, tmp_path, capsys):
    src = _save(tmp_path / "clean.png", _smooth_image(16, 2))
    out = tmp_path / "res.png"
    rc, stdout, err = _run(["--task", "inpaint-box", "--simulate", str(src), "-o", str(out), "--checkpoint",
                            str(tiny_ckpt), "--samples", "2", "--steps", "2", "--w", "1", "-q"], capsys)
    assert rc == 0, err
    assert "msm" in stdout and "mean-fill" in stdout and "PSNR" in stdout
    for name in ("res.png", "res_uncertainty.png", "res_observed.png", "res_mean-fill.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size == (16, 16)
    with Image.open(out) as im:  # the observed pixels come back (up to 8-bit rounding)
        restored = np.asarray(im.convert("RGB"), dtype=float)
    original = np.asarray(Image.open(src).convert("RGB"), dtype=float)
    border = np.ones((16, 16), dtype=bool)
    border[4:12, 4:12] = False
    assert np.abs(restored[border] - original[border]).mean() < 4.0  # noise 0.01 ~ 1.3 grey levels


def test_cli_sr4_upsamples_an_observation(tiny_ckpt, tmp_path, capsys):
    src = _save(tmp_path / "small.png", _smooth_image(4, 3))
    out = tmp_path / "big.png"
    rc, stdout, err = _run(["--task", "sr4", str(src), "-o", str(out), "--checkpoint", str(tiny_ckpt),
                            "--steps", "2", "--w", "1", "-q"], capsys)
    assert rc == 0, err
    with Image.open(out) as im:
        assert im.size == (16, 16)
    assert "sr4: 16 x 16 image" in stdout and "PSNR" not in stdout


@pytest.mark.parametrize(
    "case, message",
    [
        ("not_image", "not a readable PNG/JPEG image"),
        ("odd_size", "not divisible by 2"),
        ("same_output", "would overwrite the input"),
        ("bad_suffix", "must end in .png or .jpg"),
        ("bad_task", "'deblur' is not one of 'inpaint-box', 'sr4'"),  # --task is a choice
        ("missing", "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line(case, message, tiny_ckpt, tmp_path, capsys):
    good = _save(tmp_path / "good.png", _smooth_image(16))
    task, src, out = "inpaint-box", good, tmp_path / "out.png"
    if case == "not_image":
        src = tmp_path / "fake.png"
        src.write_text("hello")
    elif case == "odd_size":
        src = _save(tmp_path / "odd.png", _smooth_image(15))
    elif case == "same_output":
        out = good
    elif case == "bad_suffix":
        out = tmp_path / "out.h5"
    elif case == "bad_task":
        task = "deblur"
    elif case == "missing":
        src = tmp_path / "nothere.png"
    before = good.read_bytes()
    rc, _, err = _run(["--task", task, str(src), "-o", str(out), "--checkpoint", str(tiny_ckpt), "--steps", "2",
                       "-q"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert good.read_bytes() == before


def test_cli_refuses_an_mri_checkpoint(tmp_path, capsys, tiny_ckpt):
    """A checkpoint trained on another operator is refused with one line."""
    from mrimsm.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_ckpt)
    ckpt["meta"] = dict(ckpt["meta"], operator="MultiCoilMRI")
    fields = {k: v for k, v in ckpt.items() if k not in ("format", "format_version", "mrimsm_version")}
    mri = save_checkpoint(tmp_path / "mri.pt", **fields)
    src = _save(tmp_path / "good.png", _smooth_image(16))
    rc, _, err = _run(["--task", "sr4", str(src), "-o", str(tmp_path / "o.png"), "--checkpoint", str(mri)], capsys)
    assert rc == 2 and "was trained on MultiCoilMRI data, not on images" in err


# -- the shipped model ------------------------------------------------------------------------


def test_default_checkpoint_is_shipped_small_and_found(tmp_path, capsys):
    from mrimsm.inference import load_msm
    from mrimsm.restore import default_image_checkpoint

    path = default_image_checkpoint()
    assert path.stat().st_size <= 5.5 * 2**20
    meta = load_msm(path).meta
    assert meta["operator"] == "Identity" and meta["channels"] == 3
    assert meta["mask"] == {"kind": "bernoulli", "p": 0.4}
    size = int(meta["image_shape"][0])
    src = _save(tmp_path / "in.png", _smooth_image(size))
    rc, stdout, err = _run(["--task", "inpaint-box", str(src), "-o", str(tmp_path / "o.png"), "--steps", "2",
                            "--w", "1", "-q"], capsys)
    assert rc == 0, err
    assert "default_images.pt" in stdout


def test_shipped_prior_denoises_heldout_crops(tmp_path):
    """The shipped model learned something: on crops of the held-out photographs, seen through
    p = 0.4 pixel masks at noise sigma_t, its clean estimate on the kept pixels is far better
    than the noisy input (an untrained or badly trained denoiser, c_skip * input, is not)."""

    from mrimsm.data.images import center_crop_resize, read_image, to_model_range
    from mrimsm.inference import load_msm
    from mrimsm.restore import default_image_checkpoint

    mod = load_script("data_scripts/make_image_folder.py", "make_image_folder")
    mod.make_image_folder(tmp_path, size=32, num_train=0, num_heldout=8, seed=0)
    files = sorted((tmp_path / "heldout").glob("*.png"))
    x = torch.stack([torch.from_numpy(to_model_range(center_crop_resize(read_image(f), 32))) for f in files])
    den = load_msm(default_image_checkpoint()).denoiser
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(len(files), 1, 32, 32, generator=g) < 0.4).float()
    for t, ratio in ((25, 0.7), (100, 0.3)):
        sigma = float(den.schedule.sigma(torch.tensor(t)))
        abar = float(den.schedule.alpha_bar(torch.tensor(t)))
        noisy = x + sigma * torch.randn(x.shape, generator=g)
        with torch.no_grad():
            x0 = den(abar**0.5 * noisy * mask, torch.full((len(files),), t))
        mse = float(((x0 - x) ** 2 * mask).sum() / (3 * mask.sum()))
        assert mse < ratio * sigma**2, (t, mse, sigma**2)
