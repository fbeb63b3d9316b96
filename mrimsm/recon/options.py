""":class:`ReconOptions`: how to reconstruct, what :func:`~mrimsm.recon.reconstruct_file` and
:func:`~mrimsm.recon.reconstruct_directory` share. The command's options arrive typed and
checked (``mrimsm recon`` declares them from :mod:`mrimsm.solver_settings`); the same
annotations check them again here and in each method for direct callers."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import KW_ONLY, dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

from mrimsm.limits import parse_accel
from mrimsm.recon.methods import default_method
from mrimsm.recon.progress import Progress
from mrimsm.settings import check_field
from mrimsm.solver_settings import ReconSettings, flag_of

__all__ = ["parse_accel", "ReconOptions"]


@dataclass(frozen=True)
class ReconOptions:
    """How to reconstruct: the arguments :func:`~mrimsm.recon.reconstruct_file` and
    :func:`~mrimsm.recon.reconstruct_directory` share (both also take these fields as
    arguments instead: ``methods``, ``accel``, ``seed`` positionally or by keyword, the rest
    by keyword).

    Attributes:
        methods: method names (default: :func:`~mrimsm.recon.default_method`).
        accel: acceleration (number or string) for fully sampled files.
        seed: base seed of masks and method randomness.
        options: method options (``cs_lambda``, ``cs_iters``, ``device``, ...: the
            fields of :mod:`mrimsm.solver_settings` by their option keys), typed.
        png_dir: write per-slice figures there.
        center_fraction: override the retrospective mask's centre fraction.
        maps_fn: replace ESPIRiT (see :func:`~mrimsm.recon.prepare_volume`).
        progress: ``progress(desc, total)`` -> context manager with ``update(n)``.
        coils: compress each scan to this many virtual coils before the coil maps
            (``--coils``; :func:`mrimsm.data.coil_compression.compress_coils`); ``None``: none.
    """

    methods: Optional[Sequence[str]] = None
    accel: Optional[Any] = None
    seed: int = 0
    _: KW_ONLY
    options: Optional[Mapping[str, Any]] = None
    png_dir: Optional[Union[str, os.PathLike]] = None
    center_fraction: Optional[float] = None
    maps_fn: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None
    progress: Optional[Progress] = None
    coils: Optional[Any] = None

    @classmethod
    def of(cls, given: Optional["ReconOptions"], *args: Any, **kwargs: Any) -> "ReconOptions":
        """``given``, or one built from its fields as arguments (``methods, accel, seed``
        positionally, any by keyword); TypeError for both, or an unknown keyword."""
        if given is None:
            return cls(*args, **kwargs)
        if args or kwargs:
            raise TypeError("give either recon_options or its fields (methods, accel, ...), not both")
        return given

    def resolved(self) -> "ReconOptions":
        """Checked before any file is read: the method names without repeats (default:
        :func:`~mrimsm.recon.default_method`), ``accel`` parsed by :func:`parse_accel`,
        ``coils`` an integer >= 1 or ``None``, ``seed`` and the options ``batch_slices`` and
        ``coverage`` checked by :class:`~mrimsm.solver_settings.ReconSettings`' fields (the
        methods check their own options when built)."""
        from mrimsm.data.coil_compression import check_coils

        options = dict(self.options or {})
        for key in ("batch_slices", "coverage"):
            if options.get(key) is not None:
                options[key] = check_field(ReconSettings, key, options[key], flag_of(key))
        return dataclasses.replace(
            self,
            methods=list(dict.fromkeys(self.methods or [default_method()])),
            accel=parse_accel(self.accel) if self.accel is not None else None,
            seed=check_field(ReconSettings, "seed", self.seed, "--seed"),
            options=options if self.options is not None else None,
            coils=check_coils(self.coils),
        )
