"""Write fastMRI-format multi-coil "volumes" simulated from MNI152 slices into a
RAW_DIR, as input for `mrimsm prep-fastmri` (see data_scripts/README.md).

    python data_scripts/simulate_dataset.py raw/                  # training slices
    python data_scripts/simulate_dataset.py raw_test/ --split heldout
    mrimsm prep-fastmri raw/ prepared/ --size 64 --acquisition all --skip-last 0

Defaults: 64 x 64 images, 16 coils, readout oversampled by 2, noise 0.01,
8 consecutive slices per file, every other slice of the split.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from mrimsm.data.simulate import DEFAULT_SAMPLE_NOISE, write_simulated_raw
    from mrimsm.errors import MrimsmError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("raw_dir", help="output directory for the .h5 files")
    p.add_argument("--split", choices=["train", "heldout"], default="train")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--coils", type=int, default=16)
    p.add_argument("--noise", type=float, default=DEFAULT_SAMPLE_NOISE, help="k-space noise std (images in [0, 1])")
    p.add_argument("--slices-per-file", type=int, default=8)
    p.add_argument("--step", type=int, default=2, help="every STEP-th slice of the split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pixel", choices=["fit", "native"], default="fit",
                   help="fit: the 233 mm field of view resized to SIZE; native: 1 mm pixels zero-padded to SIZE")
    args = p.parse_args(argv)
    try:
        paths = write_simulated_raw(args.raw_dir, args.split, args.size, args.coils, args.noise,
                                    args.slices_per_file, args.step, args.seed, pixel=args.pixel)
    except MrimsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} files to {args.raw_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
