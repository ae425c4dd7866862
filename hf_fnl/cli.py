"""`hf-fnl compress MODEL --rank 0.5 --out DIR [--push-to-hub REPO]`: load, patch, summarize, save."""

from __future__ import annotations

import argparse
import shlex
import sys

import torch

from . import __version__
from .config import FNLConfig
from .hub import fnl_push_to_hub, save_self_contained, save_with_card
from .patch import fnl_patch
from .summary import print_fnl_summary

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _rank(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def compress(args: argparse.Namespace) -> None:
    import transformers

    model_class = getattr(transformers, args.model_class)
    model = model_class.from_pretrained(args.model, dtype=_DTYPES[args.dtype], use_safetensors=not args.allow_pickle or None)
    config = FNLConfig(rank=args.rank, forms=tuple(f.strip() for f in args.forms.split(",")), init=args.init,
                       scaling=args.scaling, target_modules=args.target_modules)
    fnl_patch(model, config)
    print_fnl_summary(model)
    command = "hf-fnl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    save = save_self_contained if args.self_contained else save_with_card
    save(model, args.out, base_model=args.model, command=command)
    print(f"saved to {args.out}")
    if args.push_to_hub:
        fnl_push_to_hub(model, args.push_to_hub, base_model=args.model, command=command)
        print(f"pushed to {args.push_to_hub}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="hf-fnl", description="Factorized attention for Hugging Face models")
    parser.add_argument("--version", action="version", version=f"hf-fnl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="patch a model's attention by SI and save it (optionally push it)")
    c.add_argument("model", help="Hub id or local directory")
    c.add_argument("--rank", type=_rank, default=0.5, help="fraction of the head size (0.5) or absolute rank (32)")
    c.add_argument("--forms", default="qk,ov")
    c.add_argument("--init", default="spectral", choices=["spectral", "default"])
    c.add_argument("--scaling", default="original", choices=["original", "rescale"])
    c.add_argument("--target-modules", default=None, help="regex over attention module names")
    c.add_argument("--model-class", default="AutoModel", help="transformers class, e.g. AutoModelForMaskedLM")
    c.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    c.add_argument("--allow-pickle", action="store_true", help="also load .bin (pickle) weights; runs code on load")
    c.add_argument("--out", required=True)
    c.add_argument("--self-contained", action="store_true",
                   help="also write modeling_fnl.py + auto_map: loadable with trust_remote_code=True without hf-fnl")
    c.add_argument("--push-to-hub", metavar="REPO", default=None)
    args = parser.parse_args(argv)
    compress(args)


if __name__ == "__main__":
    main()
