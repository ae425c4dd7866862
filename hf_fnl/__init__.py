"""hf-fnl: factorized neural layers for Hugging Face Transformers (Khodak et al., ICLR 2021)."""

__version__ = "0.1.0"

from .architectures import ARCHITECTURES, supported_model_types  # noqa: E402
from .config import FNLConfig  # noqa: E402
from .patch import FactorPair, HeadBlocks, fnl_factor_pairs, fnl_patch, is_fnl_patched  # noqa: E402
from .hub import (  # noqa: E402
    export_vanilla, fnl_merge, fnl_model_card, fnl_push_to_hub, from_pretrained, install_load_hook, save_self_contained, save_with_card,
)
from .dlrt import DLRTLinear, KLSIntegrator, fnl_dlrt_layers, fnl_dlrt_to_factorized  # noqa: E402
from .layer_patch import fnl_factorize_layers, rank_scale_for_budget  # noqa: E402
from .layers import FactorizedConv2d, FactorizedLinear  # noqa: E402
from .regularize import fd_penalty, form_norms  # noqa: E402
from .summary import FNLSummary, fnl_summary, print_fnl_summary  # noqa: E402

install_load_hook()  # models built from a config with an "fnl" section get the patched shapes

_LAZY = {  # importing transformers.Trainer is slow: load the trainer module on first use
    "FNLTrainer": "trainer",
    "FNLTrainingArguments": "trainer",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hf_fnl' has no attribute {name!r}")


__all__ = [
    "FNLTrainer",
    "FNLTrainingArguments",
    "ARCHITECTURES",
    "DLRTLinear",
    "KLSIntegrator",
    "fnl_dlrt_layers",
    "fnl_dlrt_to_factorized",
    "FactorizedConv2d",
    "FactorizedLinear",
    "fnl_factorize_layers",
    "rank_scale_for_budget",
    "FNLConfig",
    "FNLSummary",
    "FactorPair",
    "HeadBlocks",
    "fd_penalty",
    "fnl_factor_pairs",
    "export_vanilla",
    "fnl_merge",
    "fnl_model_card",
    "fnl_push_to_hub",
    "from_pretrained",
    "form_norms",
    "fnl_patch",
    "fnl_summary",
    "print_fnl_summary",
    "save_self_contained",
    "save_with_card",
    "is_fnl_patched",
    "supported_model_types",
]
