"""The reconstruction pipeline behind ``mrimsm recon``, with its table of methods.

Pipeline for one fastMRI multi-coil file (:func:`reconstruct_file`)::

    read (validated)                      mrimsm.data.fastmri_io.read_multicoil
    -> remove readout oversampling        1-D centred IFFT along H, centre-crop the rows to the
                                          reference height, FFT back (exact for column masks)
    -> mask                               the file's own mask if it is undersampled, else a seeded
                                          RandomCartesian(accel) per slice, seed_for(file, slice, seed)
    -> coil maps                          ESPIRiT from the centre columns the mask keeps
    -> reconstruct, for each method       the method table; normalized input if the method asks
    -> crop columns, magnitude            (S, h, w) on the reference's intensity scale
    -> metrics, output, PNGs              fastMRI layout, written atomically, never onto the input

A directory of files (:func:`reconstruct_directory`) runs the same pipeline per file with the
methods built once, skips files already done, reports and skips bad files, and splits the
files across ``torchrun`` ranks (rank ``r`` of ``N`` takes files ``r, r + N, ...``).

**Adding a method.** A method is an object of the protocol
:class:`~mrimsm.recon.methods.ReconMethod`: ``reconstruct(batch: SliceBatch) -> MethodOutput``,
its ``name``, ``settings`` (a dict or dataclass of everything its output depends on,
checkpoint paths under keys containing ``checkpoint``: recorded in each output, and a
directory rerun skips an output only if it matches; ``None``: every non-runtime option is
recorded instead, see :func:`mrimsm.recon.outputs.output_record`), ``batch_slices`` (slices
per call) and ``memory_per_slice(shape, coils)`` (bytes, or ``None``; the pipeline batches
down or refuses by it). :class:`~mrimsm.recon.methods.MethodBase` gives the defaults. Its
class is built as ``cls(options: Mapping[str, Any])`` (``options``: the command's options,
e.g. ``device``, ``seed``, ``cs_lambda``, ``checkpoint``; a method reads the keys it knows
and ignores the rest). Add one row to the table :data:`~mrimsm.recon.methods.METHODS`,
naming the class as ``"package.module:Class"`` (imported when the method is built, so
``recon`` starts without loading every network)::

    MethodSpec("msm", "mrimsm.recon.msm:MSMRecon", needs_normalization=True)

**Normalization contract.** With ``needs_normalization=True`` the pipeline divides the
volume's k-space by ``scale = max |A^H y|`` over the volume (zero-filled SENSE image of the
masked data with the estimated maps, see :func:`volume_scale`), so the method sees images
with max magnitude about 1, as MSM/SSDU training data (max |x| = 1 per volume); it multiplies
the returned images and uncertainty by ``scale`` afterwards. ``batch.scale`` says which
divisor was used (1.0 for methods that do not ask).

The package's modules, one job each:

================================  ================================================================
:mod:`mrimsm.recon.methods`       the method interface and the static table of methods
:mod:`mrimsm.recon.classical`     ``zero-filled``, ``sense`` and ``cs``: :class:`ZeroFilled`, ...
:mod:`mrimsm.recon.msm`           ``msm``, :class:`MSMRecon` (the MSM prior, posterior sampling)
:mod:`mrimsm.recon.ssdu`          ``ssdu``, :class:`SSDURecon` (the unrolled network)
:mod:`mrimsm.recon.options`       :class:`ReconOptions` (the settings: :mod:`mrimsm.solver_settings`)
:mod:`mrimsm.recon.progress`      progress-bar helpers
:mod:`mrimsm.recon.volume`        readout crop, masks, coil maps, scale: :func:`prepare_volume`
:mod:`mrimsm.recon.run`           one method over a volume's slices: :func:`run_method`
:mod:`mrimsm.recon.outputs`       output paths, fastMRI-layout files, PNGs, the metrics table
:mod:`mrimsm.recon.file`          one file end to end: :func:`reconstruct_file`
:mod:`mrimsm.recon.directory`     a directory across ranks: :func:`reconstruct_directory`
================================  ================================================================

Everything public is importable from ``mrimsm.recon`` itself.
"""

from mrimsm.recon.methods import (
    DEFAULT_METHOD,
    METHODS,
    MethodBase,
    MethodClass,
    MethodOutput,
    MethodSpec,
    ReconMethod,
    SliceBatch,
    available_methods,
    default_method,
    get_method,
)
from mrimsm.recon.options import ReconOptions, parse_accel
from mrimsm.recon.progress import Progress
from mrimsm.recon.volume import (
    CALIB_ROWS,
    MIN_CALIB_COLUMNS,
    MIN_CENTER_COLUMNS,
    PreparedVolume,
    coils_note,
    crop_readout,
    prepare_volume,
    volume_scale,
)
from mrimsm.recon.run import MethodResult, run_method
from mrimsm.recon.outputs import format_table, plan_outputs, save_pngs, write_result
from mrimsm.recon.file import ReconReport, reconstruct_file
from mrimsm.recon.directory import (
    DirectoryReport,
    FileOutcome,
    directory_outputs,
    files_for_rank,
    format_directory_summary,
    format_outcome,
    list_inputs,
    rank_info,
    reconstruct_directory,
)

__all__ = [
    "SliceBatch",
    "MethodOutput",
    "MethodSpec",
    "MethodBase",
    "MethodClass",
    "ReconMethod",
    "METHODS",
    "get_method",
    "available_methods",
    "default_method",
    "DEFAULT_METHOD",
    "parse_accel",
    "crop_readout",
    "MIN_CENTER_COLUMNS",
    "volume_scale",
    "PreparedVolume",
    "MethodResult",
    "prepare_volume",
    "coils_note",
    "run_method",
    "write_result",
    "save_pngs",
    "plan_outputs",
    "reconstruct_file",
    "ReconOptions",
    "ReconReport",
    "format_table",
    "list_inputs",
    "rank_info",
    "files_for_rank",
    "directory_outputs",
    "FileOutcome",
    "DirectoryReport",
    "reconstruct_directory",
    "format_outcome",
    "format_directory_summary",
]
