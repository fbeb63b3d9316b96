"""The choices of prep's choice options, in a module with no imports so that the CLI
can build its ``--mask`` and ``--espirit-backend`` Enums without loading torch."""

from __future__ import annotations

__all__ = ["MASK_KINDS", "ESPIRIT_BACKENDS"]

#: The mask families of ``--mask`` (:func:`mrimsm.data.prep.options.mask_family`).
MASK_KINDS = ("paper", "random", "equispaced")
#: The ESPIRiT implementations of ``--espirit-backend`` (:func:`mrimsm.data.espirit.estimate_maps`).
ESPIRIT_BACKENDS = ("torch", "sigpy")
