"""Natural images as MSM training data: an image folder seen only through pixel masks.

The full measurement of an image is the image itself (``T = I``,
:class:`~mrimsm.physics.operators.Identity`). Each file is one "acquisition":
it gets its own fixed Bernoulli pixel mask (keep probability ``p``, the paper's
0.4) and, optionally, fixed Gaussian noise of standard deviation ``rho`` on the
kept pixels. Both are derived from ``(seed, file name)``, so they are the same
in every epoch, every process and every run, and an item holds nothing but
``y = S (x + rho n)`` and ``S``: the trainer never sees an unmasked image.

Images are read with Pillow (PNG / JPEG), centre-cropped to a square, resized
to ``size x size`` (bicubic, antialiased when shrinking) and scaled from
``[0, 1]`` to ``[-1, 1]``.

Example::

    >>> ds = ImageFolderDataset("faces/", size=128, p=0.4, rho=0.1)
    >>> item = ds[0]
    >>> item["y"].shape, item["mask"].shape        # (3, 128, 128) float32, (1, 128, 128) float32
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from mrimsm.errors import MrimsmError
from mrimsm.physics.masks import BernoulliPixel, seed_for

__all__ = [
    "IMAGE_SUFFIXES",
    "CHANNEL_POLICIES",
    "ImageInfo",
    "probe_image",
    "read_image",
    "center_crop_resize",
    "to_model_range",
    "from_model_range",
    "image_to_tensor",
    "save_image",
    "ImageFolderDataset",
]

#: file name endings read as images (case-insensitive)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: what the dataset does with a file whose channel count differs from ``channels``
CHANNEL_POLICIES = ("convert", "skip", "error")

# salts of the per-file seeds: mask and noise are independent streams
_MASK_STREAM = 0
_NOISE_STREAM = 1
# items are kept in memory when the whole set is smaller than this (bytes)
_CACHE_LIMIT = 512 * 2**20


@dataclass
class ImageInfo:
    """What the header of an image file says: ``size`` ``(W, H)`` and ``channels`` (1 or 3)."""

    size: tuple[int, int]
    channels: int
    mode: str


def _open(path: Path):
    """``PIL.Image.open(path)``; MrimsmError (one line naming ``path``) for anything Pillow
    refuses, also an image of more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (a
    decompression bomb: a few KB on disk, gigabytes once decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MrimsmError(
            f"{path} has more than {Image.MAX_IMAGE_PIXELS:,} pixels, the most an image may have"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise MrimsmError(f"{path} is not a readable PNG/JPEG image") from None
    except Exception as exc:  # any other Pillow failure on a malformed file
        raise MrimsmError(f"{path} is not a readable PNG/JPEG image ({type(exc).__name__})") from None


def _channels_of_mode(mode: str) -> int:
    """Colour channels of a Pillow mode once alpha is dropped: 1 (grey) or 3 (colour)."""
    return 1 if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3


def probe_image(path: str | os.PathLike) -> ImageInfo:
    """Read only the header of ``path``; MrimsmError if it is not an image Pillow reads."""
    path = Path(path)
    if path.is_dir():
        raise MrimsmError(f"{path} is a directory, not an image file")
    if not path.exists():
        raise MrimsmError(f"{path} does not exist")
    with _open(path) as im:
        if im.format not in ("PNG", "JPEG", "MPO"):
            raise MrimsmError(f"{path} is a {im.format} file; PNG and JPEG are supported")
        return ImageInfo(size=tuple(im.size), channels=_channels_of_mode(im.mode), mode=im.mode)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode a PNG/JPEG file to ``(H, W, K)`` float32 in ``[0, 1]``, ``K`` = 1 (grey) or 3.

    Alpha is dropped, palette images become RGB, 16-bit grey is scaled by 65535.
    Raises MrimsmError (one line) for anything that cannot be decoded.
    """
    path = Path(path)
    info = probe_image(path)
    with _open(path) as im:
        try:
            if info.channels == 1:
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(im, dtype=np.float64) / 65535.0
                elif im.mode == "F":
                    arr = np.asarray(im, dtype=np.float64)
                else:
                    arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
                arr = arr[..., None]
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
        except (OSError, ValueError, SyntaxError):
            raise MrimsmError(f"{path} is truncated or corrupt") from None
    if arr.ndim != 3 or min(arr.shape[:2]) < 1:
        raise MrimsmError(f"{path} has no pixels")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def _match_channels(img: np.ndarray, channels: int) -> np.ndarray:
    """``(H, W, K)`` -> ``(H, W, channels)``: grey replicated to RGB, RGB to luminance (ITU-R 601)."""
    k = img.shape[-1]
    if k == channels:
        return img
    if k == 1 and channels == 3:
        return np.repeat(img, 3, axis=-1)
    if k == 3 and channels == 1:
        return (img @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    raise ValueError(f"cannot convert {k} channels to {channels}")


def center_crop_resize(img: np.ndarray, size: int) -> np.ndarray:
    """``(H, W, K)`` float in ``[0, 1]`` -> ``(K, size, size)`` float32: central square, then resize.

    Bicubic resampling (Pillow, per channel in float precision), antialiased when shrinking.
    """
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = img[top : top + s, left : left + s]
    if s == size:
        out = square
    else:
        chans = [
            np.asarray(Image.fromarray(np.ascontiguousarray(square[..., c], dtype=np.float32)).resize(
                (size, size), Image.BICUBIC))
            for c in range(square.shape[-1])
        ]
        out = np.stack(chans, axis=-1)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0).transpose(2, 0, 1), dtype=np.float32)


def to_model_range(x01: np.ndarray | torch.Tensor):
    """``[0, 1]`` -> ``[-1, 1]``."""
    return x01 * 2.0 - 1.0


def from_model_range(x: np.ndarray | torch.Tensor):
    """``[-1, 1]`` -> ``[0, 1]`` (not clipped)."""
    return (x + 1.0) * 0.5


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """``(H, W, K)`` float in ``[0, 1]`` -> ``(K, H, W)`` float32 in ``[-1, 1]`` (no resizing)."""
    return to_model_range(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)))


def save_image(path: str | os.PathLike, x: torch.Tensor | np.ndarray, value_range=(-1.0, 1.0)) -> Path:
    """Write ``(K, H, W)`` (``K`` = 1 or 3) or ``(H, W)`` values in ``value_range`` as an 8-bit
    PNG/JPEG (by suffix), atomically. Values outside the range are clipped."""
    from PIL import Image

    from mrimsm.utils import atomic_path

    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    lo, hi = float(value_range[0]), float(value_range[1])
    arr = np.clip((arr.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    u8 = np.round(arr * 255.0).astype(np.uint8)
    path = Path(path)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        Image.fromarray(u8).save(tmp, format=fmt)
    return path


@dataclass
class _Scan:
    files: list = field(default_factory=list)
    names: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    converted: int = 0


def _scan(root: Path, channels: int, policy: str) -> _Scan:
    scan = _Scan()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # hidden files and folders (e.g. .DS_Store, .ipynb_checkpoints)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            scan.skipped["not an image"] = scan.skipped.get("not an image", 0) + 1
            continue
        try:
            info = probe_image(path)
        except MrimsmError:
            scan.skipped["unreadable"] = scan.skipped.get("unreadable", 0) + 1
            continue
        if info.channels != channels:
            if policy == "error":
                kind = "grayscale" if info.channels == 1 else "RGB"
                raise MrimsmError(
                    f"{path} is {kind} but the data set is {channels}-channel "
                    f"(images.channel_mismatch: convert or skip to accept it)"
                )
            if policy == "skip":
                scan.skipped["other channel count"] = scan.skipped.get("other channel count", 0) + 1
                continue
            scan.converted += 1
        scan.files.append(path)
        scan.names.append(rel)
    return scan


class ImageFolderDataset(Dataset):
    """PNG/JPEG files under ``root`` (recursively), each seen through its own fixed pixel mask.

    Args:
        root: a folder of images (sub-folders are searched; hidden entries ignored).
        size: side of the square training images (centre crop, then resize).
        p: keep probability of the Bernoulli pixel masks (paper: 0.4).
        rho: standard deviation of the fixed measurement noise on kept pixels,
            in the ``[-1, 1]`` units of the images (paper: 0 or 0.1).
        seed: base seed; a file's mask and noise depend on ``(seed, relative path)`` only.
        channels: 3 (RGB) or 1 (grey).
        channel_mismatch: files with the other channel count are ``"convert"``-ed
            (grey replicated to RGB, RGB to luminance), ``"skip"``-ped (counted)
            or an ``"error"``.
        cache: keep the items in memory (only when the whole set fits in 512 MiB).

    Item (a dict; nothing else, by construction)::

        y      (K, size, size) float32   S (x + rho n): the masked noisy image, 0 off the mask
        mask   (1, size, size) float32   the file's pixel mask S (1 = kept)
        index  int                       position in the sorted file list

    Attributes:
        names: relative paths (POSIX) of the usable files, sorted.
        skipped: ``{reason: count}`` of files left out (not an image, unreadable, ...).
        converted: number of files converted to ``channels``.

    Raises:
        MrimsmError: ``root`` missing or not a folder, or no usable image in it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int = 128,
        p: float = 0.4,
        rho: float = 0.0,
        seed: int = 0,
        channels: int = 3,
        channel_mismatch: str = "convert",
        cache: bool = True,
    ):
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise MrimsmError(f"image folder {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise MrimsmError(f"{self.root} is not a folder of images")
        if int(size) < 1:
            raise MrimsmError(f"image size must be >= 1, got {size}")
        if not 0.0 < float(p) <= 1.0:
            raise MrimsmError(f"keep probability p must be in (0, 1], got {p}")
        if float(rho) < 0:
            raise MrimsmError(f"noise rho must be >= 0, got {rho}")
        if int(channels) not in (1, 3):
            raise MrimsmError(f"channels must be 1 or 3, got {channels}")
        if channel_mismatch not in CHANNEL_POLICIES:
            raise MrimsmError(f"channel_mismatch must be one of {', '.join(CHANNEL_POLICIES)}")
        self.size = int(size)
        self.p = float(p)
        self.rho = float(rho)
        self.seed = int(seed)
        self.channels = int(channels)
        self.family = BernoulliPixel(self.p)
        scan = _scan(self.root, self.channels, channel_mismatch)
        self._files = scan.files
        self.names: list[str] = scan.names
        self.skipped: dict[str, int] = scan.skipped
        self.converted = scan.converted
        if not self._files:
            left = f" ({self.skipped_summary()})" if self.skipped else ""
            raise MrimsmError(f"{self.root} holds no usable PNG/JPEG image{left}")
        item_bytes = 4 * (self.channels + 1) * self.size**2
        self._cache: Optional[dict[int, dict]] = {} if cache and item_bytes * len(self) <= _CACHE_LIMIT else None

    def __len__(self) -> int:
        return len(self._files)

    def skipped_summary(self) -> str:
        """E.g. ``"skipped 2 files: 1 not an image, 1 unreadable"`` (empty if none)."""
        total = sum(self.skipped.values())
        if not total:
            return ""
        parts = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return f"skipped {total} file{'s' if total != 1 else ''}: {parts}"

    def summary(self) -> str:
        """One line: usable images, conversions, skipped files."""
        text = f"{self.root}: {len(self)} images at {self.size} x {self.size}, keep p = {self.p:g}, rho = {self.rho:g}"
        if self.converted:
            text += f"; {self.converted} converted to {'RGB' if self.channels == 3 else 'grey'}"
        if self.skipped:
            text += "; " + self.skipped_summary()
        return text

    def mask(self, index: int) -> torch.Tensor:
        """The fixed pixel mask of item ``index``: ``(1, size, size)`` float32."""
        m = self.family((self.size, self.size), seed=seed_for(self.names[index], _MASK_STREAM, self.seed))
        return torch.from_numpy(m.astype(np.float32))[None]

    def _measure(self, index: int) -> dict[str, Any]:
        img = read_image(self._files[index])
        x = to_model_range(center_crop_resize(_match_channels(img, self.channels), self.size))
        mask = self.mask(index)
        y = torch.from_numpy(x) * mask
        if self.rho > 0:
            rng = np.random.default_rng(seed_for(self.names[index], _NOISE_STREAM, self.seed))
            noise = torch.from_numpy(rng.standard_normal(y.shape).astype(np.float32))
            y = y + self.rho * noise * mask
        return {"y": y.contiguous(), "mask": mask, "index": int(index)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index %= len(self)
        if self._cache is not None and index in self._cache:
            item = self._cache[index]
        else:
            item = self._measure(index)
            if self._cache is not None:
                self._cache[index] = item
        return {"y": item["y"].clone(), "mask": item["mask"].clone(), "index": item["index"]}
