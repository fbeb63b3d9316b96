"""The static table of training methods: ``method:`` in a config -> its
:class:`~mrimsm.trainmethod.TrainMethod` class, written ``"module:Class"`` and
imported on use. (The reconstruction methods have their own table,
:data:`mrimsm.recon.methods.METHODS`.)

Nothing registers itself: a new method is one row here. :func:`register_method`
adds a row at run time, for tests and experiments; the package never calls it.
"""

from __future__ import annotations

from typing import Callable, Union

from mrimsm.errors import MrimsmError
from mrimsm.trainmethod import TrainMethod
from mrimsm.utils import load_method_object

__all__ = ["TRAINING_METHODS", "training_method", "known_methods", "register_method"]

#: Training methods by name: a class or ``"module:Class"``.
TRAINING_METHODS: dict[str, Union[str, type]] = {
    "msm": "mrimsm.diffusion.method:MSMMethod",
    "msm-images": "mrimsm.diffusion.image_method:ImageMSMMethod",
    "ssdu": "mrimsm.baselines.ssdu:SSDUMethod",
}


def known_methods() -> list[str]:
    """Names of the training methods, sorted."""
    return sorted(TRAINING_METHODS)


def training_method(name: str) -> type:
    """The :class:`TrainMethod` class of ``name``; MrimsmError for an unknown or broken one."""
    if name not in TRAINING_METHODS:
        raise MrimsmError(f"unknown method {name!r}; known: {', '.join(known_methods())}")
    cls = load_method_object(name, TRAINING_METHODS[name])
    if not (isinstance(cls, type) and issubclass(cls, TrainMethod)):
        raise MrimsmError(f"method {name!r} is broken: {cls!r} is not a TrainMethod")
    return cls


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator adding a :class:`TrainMethod` to :data:`TRAINING_METHODS` (tests, experiments)."""

    def deco(cls: type) -> type:
        if not issubclass(cls, TrainMethod):
            raise TypeError(f"{cls!r} is not a TrainMethod")
        TRAINING_METHODS[name] = cls
        return cls

    return deco
