"""RMSNorm with the residual add fused (Mamba / Caduceus ``fused_add_norm``): ``rms_norm``."""

from omicskern.ops.rmsnorm.interface import BACKENDS, choose_backend, rms_norm
from omicskern.ops.rmsnorm.reference import rms_norm_ref

__all__ = ["rms_norm", "rms_norm_ref", "choose_backend", "BACKENDS"]
