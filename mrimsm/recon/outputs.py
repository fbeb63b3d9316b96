"""What a reconstruction leaves behind: output paths, fastMRI-layout files that record
what made them (:func:`output_record`, checked by :func:`output_state` before a
directory run skips a file), per-slice PNG figures, and the metrics table."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from mrimsm.errors import MrimsmError
from mrimsm.recon.methods import ReconMethod
from mrimsm.recon.run import MethodResult
from mrimsm.recon.volume import PreparedVolume
from mrimsm.utils import check_output, file_sha256, flatten_mapping, printable, same_file

def option_input_files(options: Optional[Mapping[str, Any]]) -> list[Path]:
    """The files a command reads that its options name: every checkpoint option
    (``checkpoint``, ``ssdu_checkpoint``, ...) and the solver ``settings``."""
    return [Path(v) for k, v in (options or {}).items()
            if (_is_checkpoint_key(k) or k == "settings") and isinstance(v, (str, os.PathLike)) and str(v)]


def is_mrimsm_output(path: Union[str, os.PathLike]) -> bool:
    """``path`` is a file that a reconstruction wrote: an HDF5 file holding
    :data:`RECORD_ATTR`, a NIfTI file whose header description starts with
    :data:`NIFTI_MARK`, or a NIfTI output's JSON sidecar holding :data:`RECORD_ATTR`."""
    import h5py

    name = Path(path).name
    if name.endswith(NIFTI_SUFFIXES):
        return _is_own_nifti(path)
    if name.endswith(".json"):
        try:
            return RECORD_ATTR in json.loads(Path(path).read_text())
        except (OSError, ValueError, TypeError, UnicodeDecodeError):
            return False
    try:
        with h5py.File(path, "r") as f:
            return RECORD_ATTR in f.attrs
    except (OSError, ValueError, RuntimeError):
        return False


def plan_outputs(
    input_path: Union[str, os.PathLike],
    output: Optional[Union[str, os.PathLike]],
    methods: Sequence[str],
    inputs: Sequence[Union[str, os.PathLike]] = (),
    overwrite: bool = False,
) -> dict[str, Path]:
    """Where each method's output goes.

    One method: ``output`` is the file (or, if it is an existing directory,
    ``output/<stem>.<method>.h5``). Several methods: ``output`` is a directory
    (created if needed), each method writes ``<stem>.<method>.h5``. No ``output``:
    the current directory. MrimsmError if any path is the input file or one of the
    other ``inputs`` (checkpoints, settings: :func:`option_input_files`), cannot be
    written (:func:`~mrimsm.utils.check_output`; nothing is created), or is an existing
    file that no reconstruction wrote (:func:`is_mrimsm_output`: another scan, say),
    unless ``overwrite``.
    """
    src = Path(input_path)
    stem = src.name[: -len(".h5")] if src.name.endswith(".h5") else src.stem
    out = Path(output) if output is not None else Path.cwd()
    if len(methods) == 1 and output is not None and not out.is_dir():
        paths = {methods[0]: out}
    else:
        if out.exists() and not out.is_dir():
            raise MrimsmError(f"with several --method, -o must be a directory, got the file {out}")
        if len(methods) > 1 and output is not None and not out.exists() and (
                out.suffix in (".h5", ".hdf5") or out.name.endswith(NIFTI_SUFFIXES)):
            raise MrimsmError(f"with several --method, -o must be a directory, got {out}")
        paths = {m: out / f"{stem}.{m}.h5" for m in methods}
    for p in paths.values():
        for q in (nifti_files(p).values() if is_nifti(p) else [p]):
            if same_file(src, q):
                raise MrimsmError(f"output {q} is the input file; choose another -o")
            check_output(q, inputs=[src, *inputs])
            if q.exists() and not overwrite and not is_mrimsm_output(q):
                raise MrimsmError(f"output {q} exists and is not {'a file' if q != p else 'a reconstruction'} "
                                  f"mrimsm wrote; pass --overwrite to replace it, or choose another -o")
    return paths


# -- NIfTI outputs -------------------------------------------------------------------

#: Output names that make :func:`write_result` write NIfTI-1 instead of HDF5.
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: Start of the header description (``descrip``) of every NIfTI file mrimsm writes.
NIFTI_MARK = "mrimsm"
#: Voxel size (mm) used where the file's ISMRMRD header states none.
UNKNOWN_VOXEL_MM = 1.0


def is_nifti(path: Union[str, os.PathLike]) -> bool:
    """``path`` names a NIfTI output (``.nii`` or ``.nii.gz``)."""
    return Path(path).name.endswith(NIFTI_SUFFIXES)


def nifti_files(path: Union[str, os.PathLike]) -> dict[str, Path]:
    """The files of a NIfTI output ``OUT.nii[.gz]``: ``reconstruction`` (``path``),
    ``uncertainty`` (``OUT.uncertainty.nii[.gz]``), ``error_bound``
    (``OUT.error_bound.nii[.gz]``) and ``record`` (``OUT.json``)."""
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    stem = path.name[: -len(suffix)]
    return {
        "reconstruction": path,
        "uncertainty": path.with_name(f"{stem}.uncertainty{suffix}"),
        "error_bound": path.with_name(f"{stem}.error_bound{suffix}"),
        "record": path.with_name(f"{stem}.json"),
    }


def _is_own_nifti(path: Union[str, os.PathLike]) -> bool:
    import nibabel as nib

    try:
        descrip = nib.load(str(path)).header["descrip"].item()
    except Exception:  # noqa: BLE001 - any unreadable file is not ours
        return False
    text = descrip.decode("latin-1") if isinstance(descrip, bytes) else str(descrip)
    return text.startswith(NIFTI_MARK + " ")


def nifti_voxel_mm(volume: PreparedVolume) -> tuple[tuple[float, float, float], list[str]]:
    """``((row, column, slice) mm, what the header did not state)``: the pixel size from
    the file's ISMRMRD header (``reconSpace`` field of view over matrix) and the slice
    thickness (its field of view ``z``), :data:`UNKNOWN_VOXEL_MM` for each it lacks."""
    missing = []
    if volume.pixel_mm is None:
        rows = cols = UNKNOWN_VOXEL_MM
        missing.append("pixel size")
    else:
        rows, cols = (float(v) for v in volume.pixel_mm)
    if volume.slice_mm is None:
        thick = UNKNOWN_VOXEL_MM
        missing.append("slice thickness (field of view z)")
    else:
        thick = float(volume.slice_mm)
    return (rows, cols, thick), missing


def nifti_note(volume: PreparedVolume, path: Union[str, os.PathLike]) -> Optional[str]:
    """The one-line note for a NIfTI output whose voxel sizes the header did not give."""
    _, missing = nifti_voxel_mm(volume)
    if not missing:
        return None
    return (f"{volume.path.name}: the ISMRMRD header states no {' and no '.join(missing)}; "
            f"{Path(path).name} uses {UNKNOWN_VOXEL_MM:g} mm there")


def _nifti_bytes(volume_shw: np.ndarray, voxel_mm: Sequence[float], descrip: str, gz: bool) -> bytes:
    import gzip

    import nibabel as nib

    data = np.ascontiguousarray(np.asarray(volume_shw, dtype=np.float32).transpose(1, 2, 0))
    affine = np.diag([*map(float, voxel_mm), 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * d for n, d in zip(data.shape, voxel_mm)]  # the volume's centre at 0
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = descrip.encode("ascii", "replace")[:79]
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=6, mtime=0) if gz else raw


def write_nifti(volume: PreparedVolume, result: MethodResult, path: Union[str, os.PathLike],
                attrs: Mapping[str, Any], record: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``result`` as NIfTI-1 files (:func:`nifti_files`), each atomically, the JSON
    record last.

    Layout: the magnitude volume float32 with axes ``(i, j, k)`` = (image row, image column,
    slice), i.e. the HDF5 ``reconstruction`` ``(S, h, w)`` transposed to ``(h, w, S)``; rows
    are the ISMRMRD readout (``x``), columns the phase encode (``y``), slices the file's
    slice order. Voxel sizes (:func:`nifti_voxel_mm`): the header's pixel size and slice
    thickness (1 mm where it states none; the header gives no slice gap, so slices are
    placed one thickness apart). The affine is that diagonal with the volume's centre at
    the origin (sform code 2, nibabel's default; qform unset): it gives sizes and axis
    order in the scan's own encoding frame, **not** scanner or patient coordinates
    (fastMRI headers carry no slice positions or orientation). ``uncertainty`` and
    ``error_bound``, when the result has them, go to their own files in the same layout;
    old ones mrimsm wrote at those names are removed when this result has none. The
    header description starts with :data:`NIFTI_MARK`; ``OUT.json`` holds
    ``{RECORD_ATTR: record, "attrs": attrs, "files": ..., "axes": ...}``, ``attrs`` the
    attributes the HDF5 output would carry (metrics included)."""
    from mrimsm import __version__
    from mrimsm.utils import atomic_path

    files = nifti_files(path)
    gz = files["reconstruction"].name.endswith(".gz")
    voxel, missing = nifti_voxel_mm(volume)
    arrays = {"reconstruction": result.reconstruction, "uncertainty": result.uncertainty,
              "error_bound": result.error_bound}
    written = {}
    for key, arr in arrays.items():
        target = files[key]
        if arr is None:
            if target.exists() and is_mrimsm_output(target):
                target.unlink()  # a stale map of an earlier run would pass for this one's
            continue
        descrip = f"{NIFTI_MARK} {__version__} {result.method} {key}"
        with atomic_path(target) as tmp:
            tmp.write_bytes(_nifti_bytes(arr, voxel, descrip, gz))
        written[key] = target.name
    side = {
        RECORD_ATTR: _plain(record) if record is not None else None,
        "attrs": _plain(dict(attrs)),
        "files": written,
        "axes": "i, j, k = image row (readout, ISMRMRD x), image column (phase encode, y), slice; "
                "the scan's encoding frame, not scanner coordinates",
        "voxel_mm": list(voxel),
        "voxel_mm_assumed": missing,
    }
    with atomic_path(files["record"]) as tmp:
        tmp.write_text(json.dumps(side, sort_keys=True, indent=1) + "\n")
    return files["reconstruction"]


#: HDF5 attribute of an output: JSON of :func:`output_record`, what made the file.
RECORD_ATTR = "mrimsm_record"
#: Method options that change how a method runs (where, how fast), not what it returns.
RUNTIME_OPTIONS = frozenset({"device", "progress", "threads"})


def _plain(value: Any) -> Any:
    """``value`` as JSON types (dataclasses and mappings as dicts, paths as text)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _is_checkpoint_key(key: str) -> bool:
    return "checkpoint" in key


def output_record(name: str, method: ReconMethod, options: Mapping[str, Any], job: Any) -> dict:
    """What an output of method ``name`` is made of, stored in it as :data:`RECORD_ATTR`.

    ``{"method", "accel", "center_fraction", "seed", "settings", "checkpoint_sha256"}``:
    ``accel`` / ``center_fraction`` / ``seed`` as asked (``job``: a resolved
    :class:`~mrimsm.recon.ReconOptions`); ``settings`` the built method's own ``settings``
    when it has them (a dict or a dataclass such as the solver's
    ``PosteriorSettings``, taken whole so that new fields count), else every option that is
    not a runtime one (:data:`RUNTIME_OPTIONS`); ``checkpoint_sha256`` the hash of each
    setting naming a checkpoint file (so a retrained model at the same path counts as other);
    ``coils`` the ``--coils`` asked for, only when one was (records of runs without it stay
    as they were).
    """
    own = method.settings
    settings = _plain(own) if own is not None else _plain(
        {k: v for k, v in options.items() if k not in RUNTIME_OPTIONS and v is not None})
    if not isinstance(settings, dict):
        settings = {"value": settings}
    record = {
        "method": name,
        "accel": job.accel,
        "center_fraction": job.center_fraction,
        "seed": int(job.seed),
        "settings": settings,
    }
    if getattr(job, "coils", None) is not None:
        record["coils"] = int(job.coils)
    hashes = {k: file_sha256(v) for k, v in settings.items()
              if _is_checkpoint_key(k) and isinstance(v, str) and v and Path(v).is_file()}
    if hashes:
        record["checkpoint_sha256"] = hashes
    return record


def own_mask_record(record: Mapping[str, Any]) -> dict:
    """``record`` for an input that carries its own undersampling mask: ``accel`` is
    ``None``, since the asked acceleration played no part (the output's ``acceleration``
    attribute holds the file's own)."""
    return dict(record, accel=None)


def _comparable(record: Mapping[str, Any]) -> dict:
    """The record without checkpoint *paths* (their hashes are compared instead)."""
    out = dict(record)
    settings = dict(out.get("settings") or {})
    for key in [k for k in settings if _is_checkpoint_key(k) and k in (out.get("checkpoint_sha256") or {})]:
        del settings[key]
    out["settings"] = settings
    return out


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    a, b = flatten_mapping(old), flatten_mapping(new)
    return [f"{k} {a.get(k, '(none)')} -> {b.get(k, '(none)')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def output_state(path: Union[str, os.PathLike], record: Mapping[str, Any],
                 num_slices: Optional[int] = None) -> tuple[str, str]:
    """Whether ``path`` already holds the output ``record`` describes.

    Returns ``(state, reason)``: ``("missing", "")``; ``("done", "")`` when it opens
    cleanly, holds a finite ``reconstruction`` of ``num_slices`` slices (if given) and
    was made with the same record; ``("broken", why)`` when it does not open cleanly
    or is incomplete (nothing of value: redo it); ``("different", why)`` when it is a
    complete output of other settings, or has no record (refuse to replace it unasked).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        return "missing", ""
    try:
        with h5py.File(path, "r") as f:
            if "reconstruction" not in f:
                return "broken", "holds no reconstruction"
            rec = f["reconstruction"]
            if rec.ndim != 3 or (num_slices is not None and rec.shape[0] != num_slices):
                return "broken", f"holds a reconstruction of shape {tuple(rec.shape)}, not {num_slices} slices"
            if not np.isfinite(rec[()]).all():
                return "broken", "holds NaN or Inf"
            stored = f.attrs.get(RECORD_ATTR)
    except (OSError, KeyError, ValueError, RuntimeError, TypeError):
        return "broken", "does not open cleanly (truncated or corrupt)"
    if stored is None:
        return "different", "has no settings record (another tool or an older mrimsm made it)"
    try:
        stored = json.loads(stored)
    except (TypeError, ValueError):
        return "broken", "has an unreadable settings record"
    diff = _differences(_comparable(stored), _comparable(_plain(record)))
    if diff:
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        return "different", "was made with other settings: " + "; ".join(diff[:3]) + more
    return "done", ""


def _storable(value: Any) -> Any:
    """An input attribute as HDF5 can store it again (text that is not UTF-8, e.g. bytes
    read with surrogate escapes, keeps its bytes as ``\\xNN``)."""
    return printable(value) if isinstance(value, str) else value


def write_result(volume: PreparedVolume, result: MethodResult, path: Union[str, os.PathLike],
                 record: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``result`` in fastMRI's layout (atomically), metrics as attributes and
    ``record`` (:func:`output_record`) as :data:`RECORD_ATTR`; a ``path`` ending in
    ``.nii`` or ``.nii.gz`` is written as NIfTI instead (:func:`write_nifti`)."""
    from mrimsm.data.fastmri_io import write_reconstruction

    path = Path(path)
    if same_file(volume.path, path):
        raise MrimsmError(f"output {path} is the input file; choose another -o")
    attrs = _result_attrs(volume, result)
    if is_nifti(path):
        if result.bound_info:
            attrs["error_bound_calibration"] = _plain(result.bound_info)
        return write_nifti(volume, result, path, attrs, record)
    if record is not None:
        attrs[RECORD_ATTR] = json.dumps(_plain(record), sort_keys=True)
    extra = {"mask": volume.mask.astype(np.uint8)}
    if result.uncertainty is not None:
        extra["uncertainty"] = result.uncertainty
    if result.error_bound is not None:
        extra["error_bound"] = result.error_bound
    if result.bound_info:
        attrs["error_bound_calibration"] = json.dumps(_plain(result.bound_info), sort_keys=True)
    return write_reconstruction(path, result.reconstruction, attrs=attrs, extra=extra)


def _result_attrs(volume: PreparedVolume, result: MethodResult) -> dict:
    """The attributes an output carries: the input's, how it was made, the metrics."""
    from mrimsm import __version__

    attrs: dict[str, Any] = {k: _storable(volume.attrs[k]) for k in ("acquisition", "patient_id", "max", "norm")
                             if k in volume.attrs}
    attrs.update(
        method=result.method,
        source_file=_storable(volume.path.name),
        mask_source=volume.mask_source,
        acceleration=volume.accel if volume.accel is not None else volume.achieved_accel,
        acceleration_achieved=volume.achieved_accel,
        seed=volume.seed,
        seconds_per_slice=result.seconds_per_slice,
        mrimsm_version=__version__,
    )
    for key, value in (result.metrics or {}).items():
        attrs[key] = value
    return attrs


def save_pngs(volume: PreparedVolume, result: MethodResult, out_dir: Union[str, os.PathLike]) -> list[Path]:
    """One PNG per slice: reference, zero-filled, reconstruction, |error|, uncertainty
    (the panels that exist). Files ``<stem>.<method>.slice<NNN>.png``, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mrimsm.utils import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = volume.path.name[: -len(".h5")] if volume.path.name.endswith(".h5") else volume.path.stem
    ref = volume.reference
    written = []
    bound = result.error_bound
    level = result.bound_info.get("level")
    for i, sl in enumerate(volume.slices):
        vmax = float(ref[i].max()) if ref is not None else float(result.reconstruction[i].max())
        panels = []
        if ref is not None:
            panels.append(("reference", ref[i], "gray", vmax))
        panels.append(("zero-filled", volume.zero_filled[i], "gray", vmax))
        panels.append((result.method, result.reconstruction[i], "gray", vmax))
        if ref is not None:
            panels.append(("|error|", np.abs(result.reconstruction[i] - ref[i]), "magma", vmax / 4))
        if bound is not None:  # the same colour scale as |error|
            panels.append((f"{level:.0%} error bound", bound[i], "magma", vmax / 4))
        if result.uncertainty is not None:
            panels.append(("std", result.uncertainty[i], "viridis", None))
        diagram = ref is not None and result.uncertainty is not None
        fig, axes = plt.subplots(1, len(panels) + diagram, figsize=(2.6 * (len(panels) + diagram), 2.9))
        axes = np.atleast_1d(axes)
        for ax, (title, img, cmap, top) in zip(axes, panels):
            ax.imshow(img, cmap=cmap, vmin=0, vmax=top)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        if diagram:
            _reliability_panel(axes[-1], result.reconstruction[i] - ref[i], result.uncertainty[i], ref[i],
                               result.bound_info)
        fig.suptitle(f"{printable(volume.path.name)} slice {sl}", fontsize=9)
        fig.tight_layout()
        target = out_dir / f"{stem}.{result.method}.slice{int(sl):03d}.png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(target)
    return written


def _reliability_panel(ax: Any, error: np.ndarray, std: np.ndarray, reference: np.ndarray, bound_info: dict) -> None:
    """Nominal vs observed coverage inside the object for one slice: the Gaussian interval
    ``mean +- z (std + floor)`` over nominal levels 0.5-0.99, and the calibrated bound at
    the level it was written for (a dot), when the result has one."""
    from scipy.stats import norm

    from mrimsm.uncertainty import object_support, std_floor

    inside = object_support(reference)
    e = np.abs(error)[inside]
    s = std[inside] + std_floor(std)
    levels = np.linspace(0.5, 0.99, 25)
    z = norm.ppf(0.5 + levels / 2)
    ax.plot([0.5, 1], [0.5, 1], color="0.6", lw=0.8)
    ax.plot(levels, [np.mean(e <= zz * s) for zz in z], label="mean +- z std", lw=1.2)
    if "scale" in bound_info:
        q, lv = float(bound_info["scale"]), float(bound_info["level"])
        ax.plot([lv], [np.mean(e <= q * s)], "o", ms=4, label=f"bound {lv:.0%}")
    ax.set_xlim(0.5, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal", fontsize=8)
    ax.set_ylabel("observed (object)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="lower right")
    ax.set_title("coverage", fontsize=9)


def format_table(results: Sequence[MethodResult], volume: Optional[PreparedVolume] = None) -> str:
    """A plain-text metrics table, one row per method: PSNR / SSIM / NMSE in fastMRI's
    per-volume convention and in the paper's per-slice [0, 1] convention, and seconds per slice."""
    head = (
        f"{'method':<12} {'PSNR':>7} {'SSIM':>7} {'NMSE':>8}   {'PSNR':>7} {'SSIM':>7} {'NMSE':>8}   {'s/slice':>8}"
    )
    lines = []
    if volume is not None:
        how = f"R = {volume.accel:g}" if volume.accel is not None else "the file's own mask"
        lines.append(
            f"{volume.path.name}: {len(volume.slices)} slices, {how} (achieved {volume.achieved_accel:.2f}), "
            f"coil maps {volume.maps_seconds / max(len(volume.slices), 1):.2f} s/slice"
        )
        if volume.coil_energy_kept is not None:
            lines.append(
                f"coil compression: {volume.file_coils} -> {volume.kspace.shape[1]} virtual coils, "
                f"keeping >= {100 * volume.coil_energy_kept:.2f} % of the centre's energy "
                f"({volume.compress_seconds / max(len(volume.slices), 1):.3f} s/slice)"
            )
        if volume.single_coil:
            lines.append("single-coil file: identity coil map on the object's support, reference reconstruction_esc")
        if volume.encoded is not None:
            left, right = volume.encoded
            lines.append(
                f"encoded columns {left}..{right - 1} of {volume.kspace.shape[-1]}: the others are zero "
                f"padding (never sampled, not counted in R)"
            )
    lines += [f"{'':<12} {'fastMRI (volume, max = ref max)':^25}   {'paper (per slice, [0, 1])':^25}", head]
    lines.append("-" * len(head))
    for r in results:
        m = r.metrics
        if m is None:
            vals = f"{'-':>7} {'-':>7} {'-':>8}   {'-':>7} {'-':>7} {'-':>8}"
        else:
            vals = (
                f"{m['psnr']:7.2f} {m['ssim']:7.4f} {m['nmse']:8.4f}   "
                f"{m['psnr_slice']:7.2f} {m['ssim_slice']:7.4f} {m['nmse_slice']:8.4f}"
            )
        lines.append(f"{r.method:<12} {vals}   {r.seconds_per_slice:8.3f}")
    for r in results:  # which model a learned method used (e.g. the shipped prior picked by size)
        if r.info.get("model"):
            lines.append(f"{r.method} model: {r.info['model']}")
    if results and all(r.metrics is None for r in results):
        name = volume.reference_name if volume is not None else "reconstruction_rss"
        lines.append(f"(no {name} in the file: no metrics)")
    return printable("\n".join(lines))
