"""hf-fnl: factorized neural layers for Hugging Face Transformers (Khodak et al., ICLR 2021)."""

__version__ = "0.1.0"

from .architectures import ARCHITECTURES, supported_model_types  # noqa: E402
from .config import FNLConfig  # noqa: E402
from .patch import FactorPair, HeadBlocks, fnl_factor_pairs, fnl_patch, is_fnl_patched  # noqa: E402
from .summary import FNLSummary, fnl_summary, print_fnl_summary  # noqa: E402

__all__ = [
    "ARCHITECTURES",
    "FNLConfig",
    "FNLSummary",
    "FactorPair",
    "HeadBlocks",
    "fnl_factor_pairs",
    "fnl_patch",
    "fnl_summary",
    "print_fnl_summary",
    "is_fnl_patched",
    "supported_model_types",
]
