"""Denoising dictionary transforms: Gaussian, median, wavelet shrinkage, anisotropic diffusion, NLM.

All of them smooth intensity images only (label maps, by kind, are left alone), run on a
single sample ``[C, D, H, W]`` or a batch ``[B, C, D, H, W]`` on the CPU or CUDA, and keep the
dtype (an integer image becomes float32). The math lives in :mod:`gpuprep.functional.filters`,
:mod:`~gpuprep.functional.wavelet`, :mod:`~gpuprep.functional.diffusion` and :mod:`~gpuprep.functional.nlmeans`.
"""

from .diffusion import AnisotropicDiffusion
from .gaussian import GaussianDenoise
from .median import MedianDenoise
from .nlmeans import NonLocalMeans
from .wavelet import WaveletDenoise

__all__ = ["AnisotropicDiffusion", "GaussianDenoise", "MedianDenoise", "NonLocalMeans", "WaveletDenoise"]
