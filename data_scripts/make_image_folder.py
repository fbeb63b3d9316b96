"""Build the tiny natural-image folder from the photographs scikit-image ships on disk.

FFHQ cannot be downloaded here, so tests and the CPU config ``configs/ffhq_tiny.yaml``
train on random crops of a handful of photographs that the scikit-image wheel
carries (no network access). Two photographs are held out entirely for evaluation::

    OUT/train/<photo>_<k>.png     crops of the training photographs
    OUT/heldout/<photo>_<k>.png   crops of the held-out photographs (chelsea, coffee)

Each crop is a random square (side log-uniform between ``min_side`` pixels and the
photo's short side), flipped left-right with probability 1/2, resized to
``size x size`` (bicubic, antialiased) and saved as 8-bit RGB PNG. Everything is
seeded: the same arguments write byte-identical files.

Usage::

    .venv/bin/python data_scripts/make_image_folder.py data/images --size 64 --train 512 --heldout 32
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

#: RGB photographs used for training (file names inside skimage/data)
#: (object photographs; the noise-like textures grass, gravel and the Hubble deep field
#: are left out: at 32 x 32 they look like pixel noise and teach the prior that noise is an image)
TRAIN_PHOTOS = (
    "astronaut.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "ihc.png",
    "retina.jpg",
)
#: greyscale photographs added to training (replicated to RGB)
TRAIN_GREY_PHOTOS = ("camera.png", "brick.png", "coins.png")
#: photographs never used for training
HELDOUT_PHOTOS = ("chelsea.png", "coffee.png")


def skimage_data_dir() -> Path:
    """The folder of scikit-image's bundled images (found without importing skimage)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-image is not installed")
    return Path(spec.submodule_search_locations[0]) / "data"


def _load_rgb(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def random_crops(photo: np.ndarray, num: int, size: int, seed: int, min_side: int = 48) -> list:
    """``num`` seeded crops of ``photo`` ``(H, W, 3)`` uint8 -> list of ``(size, size, 3)`` uint8."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    short = min(h, w)
    lo = min(max(min_side, size // 2), short)
    out = []
    for _ in range(num):
        side = int(round(np.exp(rng.uniform(np.log(lo), np.log(short)))))
        top = int(rng.integers(0, h - side + 1))
        left = int(rng.integers(0, w - side + 1))
        crop = photo[top : top + side, left : left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BICUBIC)
        out.append(np.asarray(img))
    return out


def _seed(name: str, base: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{base}:{name}".encode()).digest()[:4], "little")


def _split_counts(total: int, parts: int) -> list:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _write(folder: Path, photos: Sequence[str], total: int, size: int, seed: int, data_dir: Path) -> int:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, count in zip(photos, _split_counts(total, len(photos))):
        photo = _load_rgb(data_dir / name)
        stem = Path(name).stem
        for k, crop in enumerate(random_crops(photo, count, size, _seed(name, seed))):
            target = folder / f"{stem}_{k:04d}.png"
            tmp = folder / f".{target.name}.tmp"
            Image.fromarray(crop).save(tmp, format="PNG")
            os.replace(tmp, target)
            written += 1
    return written


def make_image_folder(out: str | os.PathLike, size: int = 64, num_train: int = 512, num_heldout: int = 32,
                      seed: int = 0, grey: bool = True) -> dict:
    """Write ``out/train`` and ``out/heldout``; return ``{"train": n, "heldout": m}``."""
    if size < 8:
        raise SystemExit("--size must be >= 8")
    data_dir = skimage_data_dir()
    out = Path(out)
    photos = TRAIN_PHOTOS + (TRAIN_GREY_PHOTOS if grey else ())
    n_train = _write(out / "train", photos, num_train, size, seed, data_dir)
    n_held = _write(out / "heldout", HELDOUT_PHOTOS, num_heldout, size, seed, data_dir)
    return {"train": n_train, "heldout": n_held}


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output folder (train/ and heldout/ are created in it)")
    ap.add_argument("--size", type=int, default=64, help="side of the saved crops (default 64)")
    ap.add_argument("--train", type=int, default=512, help="number of training crops (default 512)")
    ap.add_argument("--heldout", type=int, default=32, help="number of held-out crops (default 32)")
    ap.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    ap.add_argument("--no-grey", action="store_true", help="use only the RGB photographs")
    args = ap.parse_args(argv)
    counts = make_image_folder(args.out, args.size, args.train, args.heldout, args.seed, grey=not args.no_grey)
    print(f"wrote {counts['train']} training and {counts['heldout']} held-out crops to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
