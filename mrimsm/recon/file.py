"""One input file through the whole pipeline (:func:`reconstruct_file`), and what a
directory run shares with it: the methods built once on their device
(:func:`build_methods`) and one file reconstructed with them (:func:`reconstruct_one`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from mrimsm.errors import Interrupted, MrimsmError
from mrimsm.interrupt import raising_interrupts
from mrimsm.recon.calibration import attach_error_bound, require_calibration
from mrimsm.recon.methods import ReconMethod, get_method
from mrimsm.recon.options import ReconOptions
from mrimsm.recon.outputs import (
    is_nifti, nifti_files, nifti_note, option_input_files, output_record, own_mask_record, plan_outputs, save_pngs,
    write_result,
)
from mrimsm.recon.run import run_method
from mrimsm.recon.volume import PreparedVolume, accel_note, coils_note, prepare_volume
from mrimsm.utils import check_output, resolve_device, same_file


@dataclass
class ReconReport:
    """What :func:`reconstruct_file` did."""

    volume: PreparedVolume
    results: list
    outputs: dict
    pngs: list
    notes: list = field(default_factory=list)  # one-line remarks, e.g. an --accel the file's mask overrides


def reconstruct_file(
    input_path: Union[str, os.PathLike],
    output: Optional[Union[str, os.PathLike]] = None,
    *args: Any,
    recon_options: Optional[ReconOptions] = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> ReconReport:
    """Reconstruct one file with one or more methods and write the outputs.

    Everything that can be checked before the expensive work is (method names,
    ``accel``, output paths, the file itself); each output appears atomically.

    Args:
        input_path: fastMRI multi-coil ``.h5``.
        output: output file (one method) or directory (several); default: the current directory.
            A file named ``*.nii`` or ``*.nii.gz`` is written as NIfTI
            (:func:`~mrimsm.recon.outputs.write_nifti`: the volume, maps beside it, a JSON record).
        recon_options: a :class:`~mrimsm.recon.ReconOptions` (methods, accel, seed, method
            options, png_dir, center_fraction, maps_fn, progress), or give its fields
            instead: ``methods``, ``accel``, ``seed`` positionally or by keyword, the rest
            by keyword, e.g. ``reconstruct_file(src, out, ["cs"], accel=4, png_dir="png")``.
        overwrite: replace an existing ``output`` that no reconstruction wrote (without it:
            refused, :func:`~mrimsm.recon.outputs.plan_outputs`).
    """
    job = ReconOptions.of(recon_options, *args, **kwargs).resolved()
    if not Path(input_path).exists():
        raise MrimsmError(f"no such file: {input_path}")
    inputs = option_input_files(job.options)
    outputs = plan_outputs(input_path, output, job.methods, inputs=inputs, overwrite=overwrite)
    if job.png_dir is not None:
        check_output(job.png_dir, kind="dir", inputs=[input_path, *inputs], flag="--png")
        clash = next((p for p in outputs.values() if same_file(p, job.png_dir)), None)
        if clash is not None:
            raise MrimsmError(f"--png {job.png_dir} is also the output file {clash}; choose another --png or -o")
    opts, built = build_methods(job)  # bad options fail before the heavy work
    written: list[Path] = []
    try:
        with raising_interrupts():
            return reconstruct_one(input_path, outputs, built, opts, job, written=written)
    except KeyboardInterrupt:
        h5 = [str(p) for p in written if p.suffix != ".png"]
        png = len(written) - len(h5)
        done = (", ".join(h5) or "nothing") + (f" and {png} PNG files" if png else "")
        raise Interrupted(f"{input_path}: wrote {done} before the interrupt (each file whole); "
                          f"not written: the rest; rerun to finish") from None


def build_methods(job: ReconOptions, local_rank: int = 0) -> tuple[dict, dict[str, ReconMethod]]:
    """The method options with ``seed`` and the resolved ``device``, and each of
    ``job.methods`` built once with them."""
    specs = [get_method(m) for m in job.methods]
    opts = dict(job.options or {})
    opts.setdefault("seed", job.seed)
    opts["device"] = str(resolve_device(opts.get("device"), local_rank))
    return opts, {spec.name: spec.build(opts) for spec in specs}


def reconstruct_one(
    input_path: Union[str, os.PathLike],
    outputs: Mapping[str, Path],
    built: Mapping[str, ReconMethod],
    opts: Mapping[str, Any],
    job: ReconOptions,
    written: Optional[list] = None,
) -> ReconReport:
    """Prepare one file, run the ``built`` methods, write ``outputs`` (and PNGs), each
    output with its :func:`~mrimsm.recon.outputs.output_record`.
    ``job``: :meth:`ReconOptions.resolved` (``accel`` a number or ``None``);
    ``written``: a list each path is appended to once it is written."""
    volume = prepare_volume(
        input_path, job.accel, job.seed, center_fraction=job.center_fraction, maps_fn=job.maps_fn,
        progress=job.progress, coils=job.coils,
    )
    coverage = opts.get("coverage")
    if coverage is not None and "msm" in built:  # a bound asked for: refuse before the work if it cannot be
        require_calibration(volume, opts)
    results = [run_method(volume, m, opts, job.progress, method=b) for m, b in built.items()]
    for res in results:
        attach_error_bound(volume, res, coverage)
    written = [] if written is None else written
    for res in results:
        record = output_record(res.method, built[res.method], opts, job)
        if volume.mask_source == "file":
            record = own_mask_record(record)
        written.append(write_result(volume, res, outputs[res.method], record=record))
    pngs: list[Path] = []
    if job.png_dir is not None:
        for res in results:
            new = save_pngs(volume, res, job.png_dir)
            pngs += new
            written += new
    notes = [accel_note(volume, job.accel), coils_note(volume)]
    for res in results:
        path = outputs[res.method]
        if is_nifti(path):
            notes.append(nifti_note(volume, path))
            files = nifti_files(path)
            more = [files[k].name for k, v in (("uncertainty", res.uncertainty), ("error_bound", res.error_bound))
                    if v is not None]
            notes.append(f"{path.name}: " + (f"{' and '.join(more)} beside it; " if more else "")
                         + f"its record in {files['record'].name}")
    notes += [f"{r.method}: no error_bound written: {r.bound_info['reason']}" for r in results
              if r.uncertainty is not None and "reason" in r.bound_info]
    return ReconReport(volume, results, dict(outputs), pngs, [n for n in notes if n])
