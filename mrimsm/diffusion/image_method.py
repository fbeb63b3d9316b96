"""MSM on natural images: the ``msm-images`` training method.

Identical to :class:`~mrimsm.diffusion.method.MSMMethod` (same denoiser, same
:class:`~mrimsm.diffusion.losses.MSMLoss`, same Algorithm 1) except for where
the training examples come from (``build_dataset``; ``checkpoint_meta`` and
``preview`` only add the mask family and the pixel range): an image folder
(:class:`~mrimsm.data.images.ImageFolderDataset`), each image seen through its
own fixed Bernoulli pixel mask. Batches have no coil maps, so
:func:`~mrimsm.diffusion.method.batch_operator` makes them ``Identity(mask)``
(``T = I``); nothing downstream branches on the data kind.

Config: the MSM sections (``model``, ``diffusion``) plus ``images``
(:class:`ImageDataConfig`); ``data.root`` (or ``mrimsm train --data DIR``) is the
image folder. ``diffusion.rho: null`` follows ``images.rho``.

Checkpoint ``meta`` = MSM's, with ``operator: "Identity"``, ``channels``,
``mask: {"kind": "bernoulli", "p": p}`` and ``value_range: [-1, 1]`` (how to
turn samples into pixels).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from annotated_types import Ge, Interval

from mrimsm import distributed
from mrimsm.data.datasets import collate
from mrimsm.data.images import ImageFolderDataset
from mrimsm.diffusion.method import DiffusionConfig, MSMMethod, UNetConfig
from mrimsm.errors import MrimsmError
from mrimsm.sections import Count
from mrimsm.trainmethod import DataBundle

if TYPE_CHECKING:  # the config is read, never built, here
    from mrimsm.config import Config

__all__ = ["ImageDataConfig", "ImageMSMMethod", "VALUE_RANGE"]

#: pixel values of the training images (and of samples / restorations)
VALUE_RANGE = (-1.0, 1.0)


@dataclass
class ImageDataConfig:
    """How an image folder becomes measurements (see :class:`~mrimsm.data.images.ImageFolderDataset`).

    ``size``: training resolution (paper: 128); ``p``: pixel keep probability (paper: 0.4);
    ``rho``: measurement noise on kept pixels, images in [-1, 1] (paper: 0 or 0.1);
    ``seed``: seeds every file's mask and noise; ``channels``: 3 (RGB) or 1;
    ``channel_mismatch``: convert | skip | error for files with the other channel count.
    """

    size: Count = 128
    p: Annotated[float, Interval(gt=0, le=1)] = 0.4
    rho: Annotated[float, Ge(0)] = 0.0
    seed: Annotated[int, Ge(0)] = 0
    channels: Literal[1, 3] = 3
    channel_mismatch: Literal["convert", "skip", "error"] = "convert"


class ImageMSMMethod(MSMMethod):
    """MSM trained on an image folder through fixed pixel masks (``T = I``)."""

    config_sections = {"model": UNetConfig, "diffusion": DiffusionConfig, "images": ImageDataConfig}
    data_sections = ("data", "images")  # the folder and how its images become measurements

    @classmethod
    def build_dataset(cls, cfg: Config, dist_info: distributed.DistInfo) -> DataBundle:
        if cfg.data.root is None:
            raise MrimsmError(f"{cfg.source}: msm-images trains on an image folder; set data.root or pass --data DIR")
        im = cfg.images
        dataset = ImageFolderDataset(
            Path(cfg.data.root), size=im.size, p=im.p, rho=im.rho, seed=im.seed, channels=im.channels,
            channel_mismatch=im.channel_mismatch,
        )
        if dataset.skipped and dist_info.is_main:
            warnings.warn(f"{dataset.root}: {dataset.skipped_summary()}", stacklevel=2)
        info = {
            "root": str(dataset.root),
            "split": "all",
            "num_examples": len(dataset),
            "manifest": {"images": {"size": im.size, "p": im.p, "rho": im.rho, "seed": im.seed,
                                    "channels": im.channels, "converted": dataset.converted,
                                    "skipped": dict(dataset.skipped)}},
            "rho": im.rho,
            "example": dataset[0],
            "train_masks": None,  # the family (Bernoulli p) says it all; per-image masks derive from the seed
        }
        return DataBundle(dataset, collate, info)

    def checkpoint_meta(self, cfg: Config) -> dict:
        meta = super().checkpoint_meta(cfg)
        meta["mask"] = {"kind": "bernoulli", "p": float(cfg.images.p)}
        meta["value_range"] = list(VALUE_RANGE)
        return meta

    def preview(self, model, batch, generator):
        images = super().preview(model, batch, generator)
        lo, hi = VALUE_RANGE
        return None if images is None else (images - lo) / (hi - lo)  # the grid shows [0, 1]

