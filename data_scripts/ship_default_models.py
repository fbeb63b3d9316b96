"""Export the trained default runs as the shipped inference-only models.

    .venv/bin/python data_scripts/ship_default_models.py \
        --msm runs/default_msm --ssdu runs/default_ssdu

writes mrimsm/assets/default_msm.pt and default_ssdu.pt (EMA weights, config,
operator/mask settings; no optimizer) and copies each run's config and training
log beside them (``*.config.yaml``, ``*.log.jsonl``) for provenance. The runs
themselves come from ``mrimsm train configs/default_msm.yaml --out runs/default_msm``
and ``mrimsm train --method ssdu configs/default_ssdu.yaml --out runs/default_ssdu``
(resumable with ``--resume``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from mrimsm.checkpoint import export_for_inference

ASSETS = Path(__file__).resolve().parents[1] / "mrimsm" / "assets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--msm", type=Path, help="MSM run directory")
    ap.add_argument("--ssdu", type=Path, help="SSDU run directory")
    args = ap.parse_args()
    for name, run in (("default_msm", args.msm), ("default_ssdu", args.ssdu)):
        if run is None:
            continue
        dst = export_for_inference(run, ASSETS / f"{name}.pt", {"run": run.name, "config": f"configs/{name}.yaml"})
        for src, suffix in ((run / "config.yaml", "config.yaml"), (run / "log.jsonl", "log.jsonl")):
            if src.is_file():
                shutil.copyfile(src, ASSETS / f"{name}.{suffix}")
        print(f"wrote {dst} ({dst.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
