"""The ``prep-fastmri`` pipeline: raw fastMRI multi-coil HDF5 -> undersampled,
optionally noisy training shards with ESPIRiT maps.

Per volume (one input file), for each selected slice:

1. image-domain centre crop to the reference size (removes the readout
   oversampling, as fastMRI does), then centre crop / zero-pad to ``size x size``,
   back to k-space ``z`` ``(C, size, size)``;
2. the slice's own seeded Cartesian mask ``M`` (``seed_for(file, slice, seed)``;
   default: the paper's family, ``round(20 * size / 256)`` centre columns plus
   every other column with probability ``1 / accel``);
3. one scale per volume, estimated from what the undersampled scan holds: the
   root-sum-of-squares image of the fully sampled centre (ACS) columns common
   to the volume's masks, ``scale = 1 / max_volume RSS_acs``. Because
   ``sum_c |C_c|^2 = 1``, RSS equals ``|x|`` of the coil-combined image, at low
   resolution; on MNI simulations its peak is 4-8 % above the true peak, so the
   normalized images have ``max |x|`` of about 0.93-0.96 (never the fully
   sampled data);
4. ``y = M (scale * z) + rho * M n`` with ``n`` complex Gaussian (std 1 per real
   component), seeded per slice. The noise the raw k-space already carries is
   estimated from its empty readout rows (:func:`mrimsm.data.noise.estimate_noise_std`),
   scaled like the data (``noise_measured``); the measurements' total noise is
   ``noise_total = sqrt(noise_measured^2 + rho^2)``, per real component;
5. ESPIRiT maps from ``y`` itself (the calibration block is the ACS columns,
   :func:`mrimsm.data.espirit.calibration_region`: ``calib_width = min(24, ACS
   width)`` columns x ``calib_rows`` rows, kernel ``min(6, (calib_width + 1) // 2)``).

Output layout under ``OUT_DIR``::

    manifest.json                 every parameter, versions, inputs (size, sha256),
                                  counts, skipped files and why, the shard list
    train/<file stem>.h5          (the format: :mod:`mrimsm.data.shards`)
                                  y (N, C, H, W) complex64, mask (N, W) bool,
                                  maps (N, C, H, W) complex64, scale (N,) float32,
                                  slice_index (N,) int32; attrs source_file,
                                  noise_measured, noise_total, ...
    val/<file stem>.h5            the same plus reference (N, H, W) complex64
                                  (scale * C^H F^H z: evaluation only)

Shards are written atomically; a re-run on the same ``OUT_DIR`` skips shards
that were finished with the same parameters from the same input bytes. A data set
in ``OUT_DIR`` prepared with other parameters (its manifest's ``params_hash``, or
shards of an unfinished run) is refused unless ``overwrite``; then its
``manifest.json`` is deleted before the first new shard is written and its shards of
other parameters with it, so ``OUT_DIR`` never holds a complete manifest beside shards
it does not describe. Whenever shards are to be written, an existing
``manifest.json`` goes first for the same reason; it is written last, atomically.

The modules: :mod:`~mrimsm.data.prep.options` (:class:`PrepOptions`),
:mod:`~mrimsm.data.prep.volume` (steps 1-5 for one volume),
:mod:`~mrimsm.data.prep.inputs` (directories, slice list, input headers),
:mod:`~mrimsm.data.prep.plan` (split, :class:`PrepTask`, resume, other parameters),
:mod:`~mrimsm.data.prep.shards` (writing and resuming shards),
:mod:`~mrimsm.data.prep.worker` (running the tasks), :mod:`~mrimsm.data.prep.manifest`,
:mod:`~mrimsm.data.prep.pipeline` (:func:`prepare_dataset`) and
:mod:`~mrimsm.data.prep.simulated` (:func:`prepare_simulated_dataset`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mrimsm.data.prep.options import PrepOptions, mask_family
    from mrimsm.data.prep.pipeline import prepare_dataset
    from mrimsm.data.prep.plan import PrepTask
    from mrimsm.data.prep.simulated import prepare_simulated_dataset
    from mrimsm.data.prep.volume import espirit_settings, prepare_training_volume, to_target_kspace
    from mrimsm.data.shards import FORMAT

#: The public names and the module that defines each, imported on first use (the CLI
#: reads :mod:`~mrimsm.data.prep.choices` at start-up without loading torch).
_EXPORTS = {
    "PrepOptions": "mrimsm.data.prep.options",
    "mask_family": "mrimsm.data.prep.options",
    "PrepTask": "mrimsm.data.prep.plan",
    "prepare_dataset": "mrimsm.data.prep.pipeline",
    "prepare_training_volume": "mrimsm.data.prep.volume",
    "prepare_simulated_dataset": "mrimsm.data.prep.simulated",
    "espirit_settings": "mrimsm.data.prep.volume",
    "to_target_kspace": "mrimsm.data.prep.volume",
    "FORMAT": "mrimsm.data.shards",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
