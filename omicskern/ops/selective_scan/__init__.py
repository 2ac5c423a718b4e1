"""Mamba's selective scan (S6): ``selective_scan`` and the decoding step ``selective_state_update``."""

from omicskern.ops.selective_scan.interface import (BACKENDS, choose_backend, selective_scan,
                                                    selective_state_update)
from omicskern.ops.selective_scan.reference import selective_scan_ref, selective_state_update_ref

__all__ = ["selective_scan", "selective_state_update", "selective_scan_ref", "selective_state_update_ref",
           "choose_backend", "BACKENDS"]
