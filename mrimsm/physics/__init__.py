"""Physics: the centered FFT, the measurement operators, the mask families and the CG solver."""

from mrimsm.physics.fft import fft2c, ifft2c
from mrimsm.physics.operators import (
    BoxMask,
    Downsample,
    Identity,
    LinearOperator,
    MaskedMeasurement,
    MultiCoilMRI,
    PixelMask,
)
from mrimsm.physics.solvers import conjugate_gradient

__all__ = [
    "fft2c",
    "ifft2c",
    "LinearOperator",
    "MaskedMeasurement",
    "MultiCoilMRI",
    "Identity",
    "PixelMask",
    "BoxMask",
    "Downsample",
    "conjugate_gradient",
]
