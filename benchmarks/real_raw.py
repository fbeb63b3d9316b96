"""``mrimsm recon`` on real raw k-space: the pyqmri VFA brain (13 coils, fully sampled
Cartesian 224 x 224, ten flip angles as ten slices; ``data_scripts/real_raw.py``).

    python -m benchmarks.real_raw [--file F] [--accel 4 6] [--methods zero-filled sense cs ssdu msm]
                                    [--msm-steps 5] [--samples 4] [--threads 1] [--out results/real_raw]

Each R is one ``mrimsm recon --accel R FILE -m ...`` (:func:`mrimsm.recon.reconstruct_file`:
the same retrospective masks, ESPIRiT maps and seeds for every method; the RSS of the fully
sampled coil images is the reference). Without ``--file`` the file is made first in
``$MRIMSM_CACHE/real_raw`` (the archive is fetched on demand). Writes ``OUT/real_raw.json``
(every number), ``OUT/real_raw.md`` (the table) and ``OUT/real_raw.csv`` (the same table as
``benchmarks/results/real_raw.csv``, from which ``python -m benchmarks.readme`` writes benchmarks/README.md).
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from benchmarks import RESULTS_DIR
from benchmarks.arguments import base_parser
from benchmarks.data import data_script
from benchmarks.readme import format_table

DEFAULT_OUT = RESULTS_DIR / "real_raw"
NAMES = {"zero-filled": "zero-filled", "sense": "CG-SENSE", "cs": "CS-L1", "ssdu": "SSDU", "msm": "MSM"}


def default_file() -> Path:
    """The converted file in ``$MRIMSM_CACHE/real_raw``, made when missing."""
    from mrimsm.data.training_data import default_cache_dir

    script = data_script("real_raw")
    path = default_cache_dir() / "real_raw" / script.OUTPUT_NAME
    if not path.is_file():
        script.build(path.parent)
    return path


def run(path: Path, accels: Sequence[float], methods: Sequence[str], out: Path, msm_steps: Optional[int] = None,
        samples: Optional[int] = None) -> dict:
    """One ``reconstruct_file`` per R into ``out/R<r>``; the record of every number."""
    from mrimsm import recon as lib

    options = {k: int(v) for k, v in {"steps": msm_steps, "samples": samples}.items() if v is not None}
    rows = []
    for r in accels:
        t0 = time.perf_counter()
        job = lib.ReconOptions(methods=methods, accel=str(r), seed=0, options=options)
        rep = lib.reconstruct_file(path, out / f"R{r:g}", recon_options=job, overwrite=True)
        wall = time.perf_counter() - t0
        vol = rep.volume
        for res in rep.results:
            m = res.metrics or {}
            rows.append({
                "accel": r, "achieved": round(float(vol.achieved_accel), 3), "method": res.method,
                "psnr": m.get("psnr"), "ssim": m.get("ssim"), "psnr_slice": m.get("psnr_slice"),
                "ssim_slice": m.get("ssim_slice"), "seconds_per_slice": res.seconds_per_slice,
                "model": res.info.get("model"),
            })
        rows.append({"accel": r, "method": "_maps", "seconds_per_slice": vol.maps_seconds / max(len(vol.slices), 1),
                     "wall_s": wall, "slices": len(vol.slices)})
        print(lib.format_table(rep.results, vol), flush=True)
    return {
        "file": str(path), "accels": list(accels), "methods": list(methods), "options": options, "rows": rows,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }


def merge(old: dict, new: dict) -> dict:
    """``new``'s rows replace ``old``'s rows of the same methods; each run's command stays."""
    runs = old.get("runs") or [{k: old[k] for k in ("accels", "methods", "options", "created")}]
    runs = [r for r in runs if not set(r["methods"]) <= set(new["methods"])]
    keep = [r for r in old["rows"] if r["method"] not in new["methods"] and r["method"] != "_maps"]
    out = dict(new)
    out["rows"] = keep + new["rows"]
    out["runs"] = runs + [{k: new[k] for k in ("accels", "methods", "options", "created")}]
    return out


def _command(run: dict) -> str:
    """The command line of one run of the record."""
    opts = run["options"]
    return " ".join(["python -m benchmarks.real_raw", "--accel", *(f"{a:g}" for a in run["accels"]),
                     "--methods", *run["methods"],
                     *([f"--msm-steps {opts['steps']}"] if "steps" in opts else []),
                     *([f"--samples {opts['samples']}"] if "samples" in opts else [])])


HEADER = ["R", "method", "PSNR fastMRI", "SSIM fastMRI", "PSNR paper", "SSIM paper", "s/slice"]
SETUP = ("pyqmri VFA brain, 13 coils, 224 x 224, 10 flip angles as 10 slices; "
         "reference: RSS of the fully sampled coil images")


def table(record: dict) -> tuple[list[list[str]], dict]:
    """The results table's rows (formatted cells, per R and method) and the ESPIRiT rows by R."""
    maps, rows = {}, []
    order = list(NAMES)
    for row in sorted(record["rows"], key=lambda r: (r["accel"], order.index(r["method"]) if r["method"] in order else -1)):
        if row["method"] == "_maps":
            maps[row["accel"]] = row
            continue
        f = (lambda v, d: "-" if v is None else f"{v:.{d}f}")
        rows.append([f"{row['accel']:g} ({row['achieved']:.2f})", NAMES.get(row["method"], row["method"]),
                     f(row["psnr"], 2), f(row["ssim"], 4), f(row["psnr_slice"], 2), f(row["ssim_slice"], 4),
                     f"{row['seconds_per_slice']:.2f}"])
    return rows, maps


def _commands(record: dict) -> list[str]:
    runs = record.get("runs") or [record]
    return [_command(r) + (" --merge" if i else "") for i, r in enumerate(runs)]


def markdown(record: dict) -> str:
    """The results table: per R and method, PSNR / SSIM in both conventions and s/slice."""
    cmd = "`, then `".join(_commands(record))
    rows, maps = table(record)
    lines = [f"`{cmd}` ({record['created'][:10]}; {SETUP})", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines.append("ESPIRiT maps: " + ", ".join(f"R = {a:g} {m['seconds_per_slice']:.2f} s/slice"
                                             for a, m in maps.items()) + ".")
    models = {row["model"] for row in record["rows"] if row.get("model")}
    for model in sorted(models):
        lines.append(f"Model: {model}")
    return "\n".join(lines) + "\n"


def readme_csv(record: dict) -> str:
    """The same table as ``benchmarks/results/real_raw.csv`` (the file ``benchmarks.readme`` reads)."""
    rows, _ = table(record)
    provenance = {"date": record["created"][:10], "command": "; then ".join(_commands(record)), "setup": SETUP}
    return format_table(provenance, HEADER, rows)


def main(argv: Optional[list[str]] = None) -> int:
    p = base_parser(__doc__, out=DEFAULT_OUT, threads=1)
    p.add_argument("--file", type=Path, default=None, help="the converted file (default: made in the cache)")
    p.add_argument("--accel", type=float, nargs="+", default=[4.0, 6.0])
    p.add_argument("--methods", nargs="+", default=["zero-filled", "sense", "cs"])
    p.add_argument("--msm-steps", type=int, default=None, help="MSM reverse steps (default: the prior's settings)")
    p.add_argument("--samples", type=int, default=None, help="MSM posterior samples (default: the prior's settings)")
    p.add_argument("--merge", action="store_true", help="keep the rows of other methods in OUT/real_raw.json "
                                                         "(run slow methods apart with their own options)")
    args = p.parse_args(argv)
    from mrimsm.errors import MrimsmError
    from mrimsm.utils import set_threads

    set_threads(args.threads)
    try:
        path = args.file or default_file()
        record = run(path, args.accel, args.methods, args.out, args.msm_steps, args.samples)
    except MrimsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge and (args.out / "real_raw.json").is_file():
        record = merge(json.loads((args.out / "real_raw.json").read_text()), record)
    (args.out / "real_raw.json").write_text(json.dumps(record, indent=1))
    (args.out / "real_raw.md").write_text(markdown(record))
    (args.out / "real_raw.csv").write_text(readme_csv(record))
    print(markdown(record))
    print(f"wrote {args.out / 'real_raw.md'} and {args.out / 'real_raw.csv'} (copy it to benchmarks/results/, "
          "then make benchmarks-readme)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
