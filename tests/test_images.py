"""Natural images as an identity-operator adapter: ImageFolderDataset, the msm-images
training method, the tiny photograph folder, and train/sample through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mrimsm.errors import MrimsmError
from conftest import load_script

REPO = Path(__file__).resolve().parents[1]


def _write_rgb(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def _random_image(seed: int, h: int = 16, w: int = 16, channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels == 3 else (h, w)
    return rng.integers(0, 256, size=shape)


@pytest.fixture
def folder(tmp_path) -> Path:
    """6 RGB PNG/JPEG images (16 x 16), 1 greyscale, a text file, a corrupt .png, a hidden file."""
    root = tmp_path / "imgs"
    for i in range(5):
        _write_rgb(root / f"img{i}.png", _random_image(i))
    _write_rgb(root / "sub" / "photo.jpg", _random_image(10))
    _write_rgb(root / "grey.png", _random_image(11, channels=1))
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 4)
    _write_rgb(root / ".hidden.png", _random_image(12))
    return root


# -- the dataset -------------------------------------------------------------------


def test_dataset_scans_skips_and_converts(folder):
    from mrimsm.data.images import ImageFolderDataset

    ds = ImageFolderDataset(folder, size=16)
    assert len(ds) == 7  # 5 png + 1 jpg in a sub-folder + 1 grey converted
    assert ds.names == sorted(ds.names) and "sub/photo.jpg" in ds.names
    assert ".hidden.png" not in ds.names
    assert ds.skipped == {"not an image": 1, "unreadable": 1}
    assert ds.converted == 1
    assert "skipped 2 files" in ds.summary() and "1 converted to RGB" in ds.summary()
    grey = ds[ds.names.index("grey.png")]["y"]
    kept = ds.mask(ds.names.index("grey.png"))[0] > 0
    assert torch.equal(grey[0][kept], grey[1][kept]) and torch.equal(grey[0][kept], grey[2][kept])


def test_dataset_channel_policies(folder):
    from mrimsm.data.images import ImageFolderDataset

    ds = ImageFolderDataset(folder, size=16, channel_mismatch="skip")
    assert len(ds) == 6 and ds.skipped["other channel count"] == 1
    with pytest.raises(MrimsmError, match="grey.png is grayscale"):
        ImageFolderDataset(folder, size=16, channel_mismatch="error")
    grey_ds = ImageFolderDataset(folder, size=16, channels=1)
    assert grey_ds.converted == 6 and grey_ds[0]["y"].shape == (1, 16, 16)


def test_item_holds_only_masked_measurements(folder):
    from mrimsm.data.images import ImageFolderDataset

    ds = ImageFolderDataset(folder, size=16, p=0.4)
    item = ds[3]
    assert set(item) == {"y", "mask", "index"}  # structural: no clean image anywhere
    assert item["y"].shape == (3, 16, 16) and item["y"].dtype == torch.float32
    assert item["mask"].shape == (1, 16, 16) and item["mask"].dtype == torch.float32
    assert item["index"] == 3
    off = item["mask"][0] == 0
    assert off.any() and torch.all(item["y"][:, off] == 0)
    assert item["y"].min() >= -1 and item["y"].max() <= 1
    # the values on the mask are the image scaled to [-1, 1]
    raw = np.asarray(Image.open(folder / ds.names[3]).convert("RGB"), dtype=np.float32) / 127.5 - 1
    on = ~off
    np.testing.assert_allclose(item["y"][:, on].numpy(), raw.transpose(2, 0, 1)[:, on.numpy()], atol=1e-5)


def test_unmasked_pixels_never_reach_the_item(tmp_path):
    """Two files with the same name whose pixels differ only off the file's mask give the same item."""
    from mrimsm.data.images import ImageFolderDataset

    a = _random_image(1)
    _write_rgb(tmp_path / "a" / "x.png", a)
    mask = ImageFolderDataset(tmp_path / "a", size=16, seed=3).mask(0)[0].numpy() > 0
    b = a.copy()
    b[~mask] = 255 - b[~mask]
    _write_rgb(tmp_path / "b" / "x.png", b)
    ya = ImageFolderDataset(tmp_path / "a", size=16, seed=3)[0]["y"]
    yb = ImageFolderDataset(tmp_path / "b", size=16, seed=3)[0]["y"]
    assert torch.equal(ya, yb)
    b[mask] = 255 - b[mask]  # now also differ on the mask: the items must differ
    _write_rgb(tmp_path / "b" / "x.png", b)
    assert not torch.equal(ya, ImageFolderDataset(tmp_path / "b", size=16, seed=3)[0]["y"])


def test_masks_and_noise_are_fixed_per_file_and_seed(folder, tmp_path):
    from mrimsm.data.images import ImageFolderDataset

    ds1 = ImageFolderDataset(folder, size=16, rho=0.1, seed=5)
    ds2 = ImageFolderDataset(folder, size=16, rho=0.1, seed=5, cache=False)
    i = ds1.names.index("img2.png")
    assert torch.equal(ds1[i]["y"], ds2[i]["y"]) and torch.equal(ds1[i]["y"], ds1[i]["y"])
    # adding a file does not move another file's mask (it depends on the name only)
    _write_rgb(folder / "aaa_first.png", _random_image(99))
    ds3 = ImageFolderDataset(folder, size=16, rho=0.1, seed=5)
    assert torch.equal(ds3[ds3.names.index("img2.png")]["y"], ds1[i]["y"])
    # another seed, another mask; masks differ between files
    other = ImageFolderDataset(folder, size=16, rho=0.1, seed=6)
    assert not torch.equal(other.mask(i), ds1.mask(i))
    assert not torch.equal(ds1.mask(0), ds1.mask(1))


def test_keep_fraction_and_noise_level(tmp_path):
    from mrimsm.data.images import ImageFolderDataset

    _write_rgb(tmp_path / "flat.png", np.full((64, 64, 3), 128))
    clean = ImageFolderDataset(tmp_path, size=64, p=0.4)
    noisy = ImageFolderDataset(tmp_path, size=64, p=0.4, rho=0.1)
    m = clean.mask(0)
    assert abs(float(m.mean()) - 0.4) < 0.03
    diff = (noisy[0]["y"] - clean[0]["y"])[:, m[0] > 0]
    assert abs(float(diff.std()) - 0.1) < 0.01 and abs(float(diff.mean())) < 0.01
    assert torch.all((noisy[0]["y"] - clean[0]["y"])[:, m[0] == 0] == 0)


def test_center_crop_and_resize(tmp_path):
    from mrimsm.data.images import ImageFolderDataset, center_crop_resize

    img = np.zeros((20, 40, 3), dtype=np.float32)
    img[:, 10:30] = 1.0  # the central 20 x 20 square is white, the sides black
    out = center_crop_resize(img, 8)
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, 1.0, atol=1e-5)
    _write_rgb(tmp_path / "wide.png", (img * 255))
    item = ImageFolderDataset(tmp_path, size=8, p=1.0)[0]
    np.testing.assert_allclose(item["y"].numpy(), 1.0, atol=1e-5)


def test_bad_folders(tmp_path):
    from mrimsm.data.images import ImageFolderDataset

    with pytest.raises(MrimsmError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    (tmp_path / "junk" / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(MrimsmError, match=r"no usable PNG/JPEG image \(skipped 2 files"):
        ImageFolderDataset(tmp_path / "junk")
    with pytest.raises(MrimsmError, match="keep probability"):
        _write_rgb(tmp_path / "ok" / "a.png", _random_image(0))
        ImageFolderDataset(tmp_path / "ok", p=0)


def test_reexported_from_datasets():
    from mrimsm.data import datasets, images

    assert datasets.ImageFolderDataset is images.ImageFolderDataset


# -- the tiny photograph folder ------------------------------------------------------


def _load_script():
    return load_script("data_scripts/make_image_folder.py", "make_image_folder")


def test_make_image_folder_is_deterministic_and_holds_out_photos(tmp_path):
    mod = _load_script()
    a = mod.make_image_folder(tmp_path / "a", size=16, num_train=11, num_heldout=3, seed=0)
    mod.make_image_folder(tmp_path / "b", size=16, num_train=11, num_heldout=3, seed=0)
    mod.make_image_folder(tmp_path / "c", size=16, num_train=11, num_heldout=3, seed=1)
    assert a == {"train": 11, "heldout": 3}
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 14
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)
    held = {p.name.rsplit("_", 1)[0] for p in (tmp_path / "a" / "heldout").iterdir()}
    train = {p.name.rsplit("_", 1)[0] for p in (tmp_path / "a" / "train").iterdir()}
    assert held == {"chelsea", "coffee"} and not held & train
    with Image.open(tmp_path / "a" / files[0]) as im:
        assert im.size == (16, 16) and im.mode == "RGB"


# -- the msm-images method: train, checkpoint meta, sample ------------------------------


def _tiny_config(root: Path, **over):
    from mrimsm.config import load_config

    cfg = load_config(REPO / "configs" / "ffhq_tiny.yaml")
    values = {
        "data.root": str(root),
        "images.size": 16,
        "model.model_channels": 8,
        "model.channel_mult": [1, 2],
        "model.attention_resolutions": [],
        "model.num_head_channels": 8,
        "train.batch_size": 2,
        "train.max_steps": 2,
        "train.ckpt_every": 0,
        "train.sample_every": 0,
        "sample.preview_num": 2,
        "sample.preview_steps": 2,
    }
    values.update(over)
    return cfg.replace(**values)


def test_configs_load():
    from mrimsm.config import load_config

    tiny = load_config(REPO / "configs" / "ffhq_tiny.yaml")
    paper = load_config(REPO / "configs" / "ffhq_p04.yaml")
    noisy = load_config(REPO / "configs" / "ffhq_p04_noisy.yaml")
    for cfg in (tiny, paper, noisy):
        assert cfg.method == "msm-images" and cfg.images.p == 0.4 and cfg.sample.w == 1
    assert paper.images.size == 128 and paper.images.rho == 0.0 and noisy.images.rho == 0.1
    assert paper.model.channel_mult == [1, 1, 2, 3, 4] and paper.model.model_channels == 128
    assert paper.model.attention_resolutions == [32, 16, 8] and paper.train.lr == 1e-5


def test_simulated_data_is_refused(tmp_path):
    from mrimsm import distributed
    from mrimsm.methods import training_method as get_method

    cfg = _tiny_config(tmp_path).replace(**{"data.root": None, "data.simulated": {"size": 16}})
    with pytest.raises(MrimsmError, match="image folder"):
        get_method("msm-images").build_dataset(cfg, distributed.init())


def test_train_checkpoint_meta_and_sample(folder, tmp_path, capsys):
    from mrimsm.cli.main import main
    from mrimsm.checkpoint import load_checkpoint
    from mrimsm.inference import generate, load_msm
    from mrimsm.train import train

    cfg = _tiny_config(folder, **{"train.sample_every": 2})
    result = train(cfg, tmp_path / "run", echo=lambda m: None)
    assert result.step == 2 and all(np.isfinite(v) for _, v in result.losses)
    ckpt = load_checkpoint(tmp_path / "run")
    meta = ckpt["meta"]
    assert ckpt["method"] == "msm-images"
    assert meta["operator"] == "Identity" and meta["channels"] == 3 and meta["complex"] is False
    assert meta["mask"] == {"kind": "bernoulli", "p": 0.4} and meta["image_shape"] == [16, 16]
    assert meta["value_range"] == [-1.0, 1.0] and meta["train_masks"] is None
    assert (tmp_path / "run" / "samples" / "step_0000002.png").is_file()

    loaded = load_msm(tmp_path / "run")
    x = generate(loaded, 3, steps=3, seed=4, batch_size=2)
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert torch.equal(x, generate(loaded, 3, steps=3, seed=4, batch_size=2))

    out = tmp_path / "s.h5"
    rc = main(["sample", str(tmp_path / "run"), "-n", "2", "--steps", "2", "-o", str(out), "-q"])
    assert rc == 0, capsys.readouterr().err
    assert out.is_file() and out.with_suffix(".png").is_file()

    # the inference-only export (how the shipped model is made): smaller, same predictions
    from mrimsm.checkpoint import export_for_inference

    small = export_for_inference(tmp_path / "run" / "last.pt", tmp_path / "small.pt", half=True, data_root="data/x")
    assert small.stat().st_size < 0.5 * (tmp_path / "run" / "last.pt").stat().st_size
    exported = load_msm(small)
    assert exported.config["data"]["root"] == "data/x" and exported.meta["mask"]["kind"] == "bernoulli"
    u, t = torch.randn(2, 3, 16, 16) * 0.5, torch.tensor([10, 600])
    with torch.no_grad():
        assert torch.allclose(exported.denoiser(u, t), loaded.denoiser(u, t), atol=1e-2)


def test_cli_train_with_data_option(folder, tmp_path, capsys):
    """`mrimsm train configs/ffhq_tiny.yaml --data DIR` (a 1-step run of a shrunken copy)."""
    import yaml

    from mrimsm.cli.main import main

    cfg = _tiny_config(tmp_path / "elsewhere", **{"train.max_steps": 1})
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict()))
    rc = main(["train", str(cfg_path), "--data", str(folder), "--out", str(tmp_path / "run"), "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert (tmp_path / "run" / "last.pt").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["train", str(cfg_path), "--data", str(empty), "--out", str(tmp_path / "run2"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "no usable PNG/JPEG image" in err
    assert len(err.strip().splitlines()) == 1
