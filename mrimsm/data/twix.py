"""Siemens TWIX (``meas.dat``) -> a fastMRI multi-coil file (``mrimsm convert``).

Reads the file with twixtools, an optional dependency (``pip install mrimsm[twix]``), and
writes the layout of :mod:`mrimsm.data.fastmri_io` with
:func:`mrimsm.data.simulate.write_fastmri_file`: ``kspace`` ``(S, C, H, W)``, ``H`` the
readout with its oversampling kept (as fastMRI keeps it), ``W`` the phase-encode lines;
``reconstruction_rss`` ``(S, h, w)`` from the fully sampled lines, cropped in the image
domain to the protocol's matrix (``h`` = the base resolution: the readout oversampling
removed, as fastMRI does); an ISMRMRD header with the matrices and fields of view.

Only what converts exactly is taken: a 2-D Cartesian, fully sampled, single-echo scan.
Each image line goes to the column its ``Lin`` counter says (shifted so the k-space centre
line lands on ``W // 2``, fastMRI's centre) and to the slice of its ``(Sli, Par)`` pair;
lines that differ only in ``Ave`` are averaged. Repetitions, echoes, sets, cardiac
phases, EPI, 3-D, non-Cartesian, undersampled (PAT, partial Fourier) or asymmetric-echo
scans and reflected lines are refused, each in one line naming the file.

The core (:func:`assemble`) works on plain :class:`Line` records and a protocol dict, so
it is testable without twixtools; :func:`read_twix` is the adapter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from mrimsm.errors import MrimsmError

__all__ = ["Line", "Protocol", "TwixScan", "assemble", "read_twix", "convert", "INSTALL_HINT"]

INSTALL_HINT = "pip install mrimsm[twix]"

#: ``sKSpace.ucTrajectory``: 1 Cartesian, 2 radial, 4 spiral, 8 PROPELLER (BLADE).
TRAJECTORIES = {1: "cartesian", 2: "radial", 4: "spiral", 8: "PROPELLER"}
#: ``sKSpace.ucDimension``: 2 for 2-D, 4 for 3-D.
DIMENSION_3D = 4
#: ``sKSpace.ucPhasePartialFourier``: 16 means off (1, 2, 4, 8: 4/8 ... 7/8).
PARTIAL_FOURIER_OFF = 16
#: Counters that would need a dimension fastMRI's layout has not (refused when they vary).
REFUSED_COUNTERS = {"Rep": "repetitions", "Eco": "echoes", "Set": "sets", "Phs": "cardiac phases"}


@dataclass
class Line:
    """One image line (ADC readout) of all channels: ``data`` ``(C, N)`` complex and its
    loop counters and flags."""

    data: np.ndarray
    lin: int
    sli: int = 0
    par: int = 0
    ave: int = 0
    counters: dict = field(default_factory=dict)  # Rep, Eco, Set, Phs, Seg, ... (0 when absent)
    centre_col: Optional[int] = None
    centre_lin: Optional[int] = None
    reflect: bool = False


@dataclass
class Protocol:
    """What the conversion needs of the protocol (MeasYaps, Meas)."""

    readout_fov_mm: float
    phase_fov_mm: float
    thickness_mm: float
    base_resolution: int
    phase_lines: int
    readout_os: float = 2.0
    phase_os: float = 0.0
    trajectory: int = 1
    dimension: int = 2
    epi_factor: int = 1
    pat_factor: int = 1
    partial_fourier: int = PARTIAL_FOURIER_OFF
    sequence: str = ""
    protocol_name: str = ""
    averages: int = 1
    repetitions: int = 1


@dataclass
class TwixScan:
    """The assembled scan: ``kspace`` ``(S, C, H, W)`` complex64 (H readout, oversampled),
    ``recon_size`` ``(h, w)``, ``fov_mm`` (rows of the reconstruction, all W columns),
    ``slices``: the ``(Sli, Par)`` pair of each slice; ``averaged``: lines per k-space entry."""

    kspace: np.ndarray
    recon_size: tuple
    fov_mm: tuple
    thickness_mm: float
    slices: list
    averaged: int
    protocol: Protocol


def _refuse(path: Any, why: str) -> MrimsmError:
    return MrimsmError(f"{path}: {why}")


def check_protocol(p: Protocol, path: Any = "TWIX file") -> None:
    """Refuse, in one line, what the conversion cannot take exactly."""
    if p.trajectory != 1:
        kind = TRAJECTORIES.get(p.trajectory, f"trajectory code {p.trajectory}")
        raise _refuse(path, f"{kind} trajectory; only Cartesian TWIX scans convert (a non-Cartesian scan "
                            f"needs gridding or a NUFFT)")
    if p.dimension == DIMENSION_3D:
        raise _refuse(path, "3-D acquisition (partition encoding); only 2-D scans convert")
    if p.epi_factor > 1 or "ep2d" in p.sequence.lower():
        raise _refuse(path, f"EPI scan (EPI factor {p.epi_factor}, sequence {p.sequence or '?'}): its lines need "
                            "ramp-sampling regridding, reversal and phase correction; not supported")
    if p.pat_factor > 1:
        raise _refuse(path, f"parallel-imaging acceleration {p.pat_factor} (PAT): not fully sampled; "
                            "reconstruction_rss needs a fully sampled scan")
    if p.partial_fourier != PARTIAL_FOURIER_OFF:
        raise _refuse(path, "phase partial Fourier: not fully sampled; reconstruction_rss needs a fully sampled scan")
    if p.repetitions > 1:
        raise _refuse(path, f"{p.repetitions} repetitions: convert one repetition per file (fastMRI's layout "
                            "has no repetition axis)")
    if min(p.readout_fov_mm, p.phase_fov_mm, p.base_resolution, p.phase_lines) <= 0:
        raise _refuse(path, "the protocol states no field of view or matrix")


def assemble(lines: Sequence[Line], protocol: Protocol, path: Any = "TWIX file") -> TwixScan:
    """Place the image lines by their counters into fastMRI's ``(S, C, H, W)`` k-space.

    Column ``Lin + (W // 2 - centre line)`` with ``W`` the protocol's phase-encode lines (so
    the centre line lands on ``W // 2``); slice: the sorted distinct ``(Sli, Par)`` pairs;
    lines with the same slice and ``Lin`` (different ``Ave``) averaged. MrimsmError, one
    line, for what :func:`check_protocol` refuses and for lines that do not fill the grid
    exactly (missing or repeated lines, varying sizes, an off-centre echo, reflected lines).
    """
    check_protocol(protocol, path)
    if not lines:
        raise _refuse(path, "no image lines")
    for key, what in REFUSED_COUNTERS.items():
        values = sorted({int(ln.counters.get(key, 0)) for ln in lines})
        if len(values) > 1:
            hint = " (convert one repetition per file)" if key == "Rep" else ""
            raise _refuse(path, f"{len(values)} {what} ({key} counter); fastMRI's layout holds one{hint}")
    shapes = {tuple(ln.data.shape) for ln in lines}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise _refuse(path, f"image lines of different sizes {sorted(shapes)[:3]}; expected one (channels, samples)")
    coils, samples = next(iter(shapes))
    if any(ln.reflect for ln in lines):
        raise _refuse(path, "reflected (bipolar) readout lines; not supported")
    centre_cols = {ln.centre_col for ln in lines if ln.centre_col is not None}
    if centre_cols and centre_cols != {samples // 2}:
        raise _refuse(path, f"asymmetric echo (k-space centre at sample {sorted(centre_cols)[0]} of {samples}); "
                            "only a centred readout converts exactly")
    width = int(protocol.phase_lines)
    centre_lins = {ln.centre_lin for ln in lines if ln.centre_lin is not None}
    if len(centre_lins) > 1:
        raise _refuse(path, f"the centre line changes between lines ({sorted(centre_lins)})")
    offset = width // 2 - (centre_lins.pop() if centre_lins else width // 2)
    slice_keys = sorted({(ln.sli, ln.par) for ln in lines})
    index = {k: i for i, k in enumerate(slice_keys)}
    total = np.zeros((len(slice_keys), coils, samples, width), dtype=np.complex128)
    count = np.zeros((len(slice_keys), width), dtype=np.int64)
    seen = set()
    for ln in lines:
        col = int(ln.lin) + offset
        if not 0 <= col < width:
            raise _refuse(path, f"line {ln.lin} falls outside the {width} phase-encode lines of the protocol")
        key = (ln.sli, ln.par, ln.lin, ln.ave)
        if key in seen:
            raise _refuse(path, f"line {ln.lin} of slice {ln.sli} (average {ln.ave}) acquired twice")
        seen.add(key)
        s = index[(ln.sli, ln.par)]
        total[s, :, :, col] += ln.data
        count[s, col] += 1
    if (count == 0).any():
        s, col = map(int, np.argwhere(count == 0)[0])
        missing = int((count == 0).sum())
        raise _refuse(path, f"not fully sampled: {missing} of {count.size} lines missing (first: line "
                            f"{col - offset} of slice {slice_keys[s][0]}); reconstruction_rss needs every line")
    if len(np.unique(count)) != 1:
        raise _refuse(path, "lines with different numbers of averages; cannot average them evenly")
    kspace = (total / count[:, None, None, :]).astype(np.complex64)
    os_factor = float(protocol.readout_os) if protocol.readout_os else 1.0
    h = int(round(samples / os_factor))
    w = int(round(width / (1.0 + float(protocol.phase_os))))
    if not (1 <= h <= samples and 1 <= w <= width):
        raise _refuse(path, f"cannot crop {samples} x {width} to the protocol's {h} x {w}")
    fov = (float(protocol.readout_fov_mm), float(protocol.phase_fov_mm) * (1.0 + float(protocol.phase_os)))
    return TwixScan(kspace=kspace, recon_size=(h, w), fov_mm=fov, thickness_mm=float(protocol.thickness_mm),
                    slices=slice_keys, averaged=int(count.flat[0]), protocol=protocol)


def _twixtools():
    try:
        import twixtools  # optional: pip install mrimsm[twix]
    except ImportError:
        raise MrimsmError(f"reading Siemens TWIX needs twixtools: {INSTALL_HINT}") from None
    return twixtools


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def protocol_from_header(hdr: dict) -> Protocol:
    """A twixtools header dict (``hdr``: MeasYaps, Meas) -> :class:`Protocol`."""
    yaps, meas = hdr.get("MeasYaps", {}), hdr.get("Meas", {})
    slc = (_get(yaps, "sSliceArray", "asSlice") or [{}])[0]
    kspace = yaps.get("sKSpace", {})

    def num(value: Any, default: float) -> float:
        try:
            return float(value)
        except (TypeError, ValueError):
            return default

    return Protocol(
        readout_fov_mm=num(slc.get("dReadoutFOV"), 0.0),
        phase_fov_mm=num(slc.get("dPhaseFOV"), 0.0),
        thickness_mm=num(slc.get("dThickness"), 5.0),
        base_resolution=int(num(kspace.get("lBaseResolution"), 0)),
        phase_lines=int(num(kspace.get("lPhaseEncodingLines"), 0)),
        readout_os=num(meas.get("flReadoutOSFactor"), 2.0),
        phase_os=num(kspace.get("dPhaseOversamplingForDialog"), 0.0),
        trajectory=int(num(kspace.get("ucTrajectory"), 1)),
        dimension=int(num(kspace.get("ucDimension"), 2)),
        epi_factor=int(num(_get(yaps, "sFastImaging", "lEPIFactor"), 1)),
        pat_factor=int(num(_get(yaps, "sPat", "lAccelFactPE"), 1)),
        partial_fourier=int(num(kspace.get("ucPhasePartialFourier"), PARTIAL_FOURIER_OFF)),
        sequence=str(yaps.get("tSequenceFileName", "")),
        protocol_name=str(yaps.get("tProtocolName", "")),
        averages=int(num(yaps.get("lAverages"), 1)),
        repetitions=int(num(yaps.get("lRepetitions"), 0)) + 1,
    )


def lines_from_mdbs(mdbs: Sequence[Any]) -> list[Line]:
    """twixtools measurement data blocks -> :class:`Line` records of the image scans only
    (noise, navigator, phase-correction and reference-only scans left out)."""
    out = []
    for mdb in mdbs:
        if not mdb.is_image_scan():
            continue
        c = mdb.mdh.Counter
        out.append(Line(
            data=np.asarray(mdb.data),
            lin=int(c.Lin), sli=int(c.Sli), par=int(c.Par), ave=int(c.Ave),
            counters={k: int(getattr(c, k)) for k in ("Rep", "Eco", "Set", "Phs", "Seg")},
            centre_col=int(mdb.mdh.CenterCol), centre_lin=int(mdb.mdh.CenterLin),
            reflect=bool(mdb.is_flag_set("REFLECT")),
        ))
    return out


def read_twix(path: str | os.PathLike) -> TwixScan:
    """Read a Siemens TWIX file (its last measurement: the image scan) and assemble it."""
    path = Path(path)
    if not path.is_file():
        raise MrimsmError(f"no such file: {path}")
    twixtools = _twixtools()
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # twixtools prints its warnings
            meas = twixtools.read_twix(str(path), verbose=False)
    except Exception as exc:  # twixtools raises many kinds on a file that is not TWIX
        raise MrimsmError(f"{path}: not a readable Siemens TWIX file ({type(exc).__name__}: {exc})") from None
    if not meas or "mdb" not in meas[-1]:
        raise MrimsmError(f"{path}: no measurement in the TWIX file")
    last = meas[-1]
    protocol = protocol_from_header(last.get("hdr", {}))
    check_protocol(protocol, path)  # before placing lines: the clearer message first
    return assemble(lines_from_mdbs(last["mdb"]), protocol, path)


def convert(path: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> dict:
    """``mrimsm convert``: TWIX ``path`` -> fastMRI multi-coil ``output`` (atomically),
    validated by reading it back. Returns a summary dict (shape, recon size, fov, slices,
    averages)."""
    from mrimsm.data.fastmri_io import read_header, rss
    from mrimsm.data.simulate import ismrmrd_header_xml, write_fastmri_file
    from mrimsm.utils import check_output

    path, output = Path(path), Path(output)
    check_output(output, kind="file", inputs=[path])
    if output.exists() and not overwrite:
        raise MrimsmError(f"{output} exists; pass --overwrite to replace it")
    scan = read_twix(path)
    k = scan.kspace
    s, c, big_h, big_w = k.shape
    ref = rss(k, scan.recon_size)
    p = scan.protocol
    header = ismrmrd_header_xml((big_h, big_w), scan.recon_size, c, fov_mm=scan.fov_mm,
                                thickness_mm=scan.thickness_mm, patient_id=path.stem)
    attrs = {"acquisition": (p.protocol_name or "TWIX").replace(" ", "_"), "patient_id": path.stem,
             "source": f"Siemens TWIX {path.name}", "sequence": p.sequence, "averages": scan.averaged}
    write_fastmri_file(output, k, ref, attrs=attrs, header=header)
    info = read_header(output)
    if info["shape"] != (s, c, big_h, big_w) or tuple(info["recon_size"]) != tuple(scan.recon_size):
        raise MrimsmError(f"{output}: wrote {info['shape']}, expected {(s, c, big_h, big_w)}")
    return {"output": output, "shape": (s, c, big_h, big_w), "recon_size": tuple(scan.recon_size),
            "fov_mm": scan.fov_mm, "slices": s, "averages": scan.averaged}
