"""Short depthwise causal convolution (Hyena's short filter, Mamba/Caduceus' conv1d): ``causal_conv1d``."""

from omicskern.ops.conv1d.interface import BACKENDS, causal_conv1d, choose_backend
from omicskern.ops.conv1d.reference import causal_conv1d_ref

__all__ = ["causal_conv1d", "causal_conv1d_ref", "choose_backend", "BACKENDS"]
