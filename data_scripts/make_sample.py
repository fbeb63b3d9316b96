"""Write the deterministic demo sample: a small fastMRI multi-coil file simulated
from held-out MNI152 slices (see data_scripts/README.md).

    python data_scripts/make_sample.py --out sample.h5

Default: 4 axial slices, 64 x 64 images, 16 coils, readout oversampled by 2
(kspace (4, 16, 128, 64) complex64), reconstruction_rss (4, 64, 64), noise 0.01.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from mrimsm.data.simulate import DEFAULT_SAMPLE_NOISE, make_sample_file
    from mrimsm.errors import MrimsmError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output .h5 path (written atomically)")
    p.add_argument("--num-slices", type=int, default=4)
    p.add_argument("--size", type=int, default=64, help="image side (reconstruction_rss size)")
    p.add_argument("--coils", type=int, default=16)
    p.add_argument("--noise", type=float, default=DEFAULT_SAMPLE_NOISE, help="k-space noise std (images in [0, 1])")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        path = make_sample_file(args.out, args.num_slices, args.size, args.coils, args.noise, args.seed)
    except MrimsmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
