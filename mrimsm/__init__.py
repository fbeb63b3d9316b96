"""mrimsm: measurement score-based diffusion models for MRI reconstruction.

Train a diffusion prior from undersampled, noisy multi-coil k-space alone
(MSM, ICLR 2026) and use it to reconstruct accelerated scans.
"""

__version__ = "0.1.0"

from mrimsm.errors import MrimsmError  # noqa: E402,F401
