"""Physics: the centered FFT, the measurement operators and the mask families."""

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
]
