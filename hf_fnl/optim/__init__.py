"""Optimizers with decoupled Frobenius decay: one optimizer a file, a shared multi-tensor step."""

from .fd_adamw import FDAdamW
from .flambe import Flambe
from .lamb import Lamb
from .param_groups import fnl_param_groups

__all__ = ["FDAdamW", "Flambe", "Lamb", "fnl_param_groups"]
