"""Long FFT convolution (Hyena, HyenaDNA, bidirectional variants): ``fft_conv``."""

from omicskern.ops.fftconv.interface import BACKENDS, choose_backend, fft_conv
from omicskern.ops.fftconv.reference import fft_conv_direct_ref, fft_conv_hyenadna_ref, fft_conv_ref
from omicskern.ops.fftconv.torch import fast_fft_len

__all__ = ["fft_conv", "fft_conv_ref", "fft_conv_direct_ref", "fft_conv_hyenadna_ref", "fast_fft_len",
           "choose_backend", "BACKENDS"]
