"""The paper's IWSLT-14 decay grid (Khodak et al. 2021, Fig. 4): run it, or collect what has run, and plot.

Grid: coefficient λ ∈ --coefs × kind ∈ --kinds (wd, fd-ov, fd-qkov) × SI on/off (--si), plus one λ = 0
baseline per SI setting. Every run is `train.py <its grid flags> <the arguments after -->` into
<output-root>/<kind>-<λ>-<si|nosi>; a run whose results.json exists is not repeated, so an
interrupted sweep resumes. Writes <output-root>/sweep.md (a table) and sweep.png (test BLEU against
λ, one line per kind, solid with SI, dashed without, the λ = 0 baselines as horizontal lines).

    python recipes/iwslt14/sweep.py --output-root runs/sweep --run --launcher "accelerate launch" -- \\
        --data-dir data/iwslt14 --preset transformer_small --optimizer nag --rank 1.0
    python recipes/iwslt14/sweep.py --output-root runs/sweep          # collect and plot only
"""

from __future__ import annotations

import json
import os
import shlex

from hf_fnl.loop import grid_parser, parse_grid_args, run_missing, write_grid_report
from hf_fnl.plotting import new_figure, save_figure

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
KINDS = ("wd", "fd-ov", "fd-qkov")
LINE_STYLES = {True: "-", False: "--"}


def parse_args(argv=None):
    p = grid_parser(__doc__, "train.py")
    p.add_argument("--coefs", default="1e-6,5e-6,1e-5,5e-5,1e-4", help="decay coefficients (λ = 0 is always run)")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--si", default="on,off", help="SI settings to run: on, off or both")
    args = parse_grid_args(p, argv)
    args.coefs = [float(c) for c in args.coefs.split(",") if c]
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.si = [s == "on" for s in args.si.split(",") if s]
    if bad := [k for k in args.kinds if k not in KINDS]:
        p.error(f"--kinds: {bad} are not among {KINDS}")
    return args


def grid(coefs: list[float], kinds: list[str], si_settings: list[bool]) -> list[dict]:
    """Run descriptions: the λ = 0 baseline per SI setting, then every (kind, λ > 0, SI)."""
    runs = [dict(kind="none", coef=0.0, si=si) for si in si_settings]
    runs += [dict(kind=k, coef=c, si=si) for si in si_settings for k in kinds for c in coefs if c > 0]
    for run in runs:
        run["name"] = f"{run['kind']}-{run['coef']:g}-{'si' if run['si'] else 'nosi'}"
    return runs


def train_command(run: dict, launcher: str, output_root: str, train_args: list[str]) -> list[str]:
    spectral = [] if run["si"] else ["--no-spectral-mha", "--no-spectral-linear"]
    decay = ["--decay", f"{run['coef']:g}", "--decay-kind", run["kind"]] if run["coef"] > 0 else []
    return [*shlex.split(launcher), TRAIN, *train_args, *spectral, *decay,
            "--output-dir", os.path.join(output_root, run["name"])]


def collect(runs: list[dict], output_root: str) -> list[dict]:
    """The runs that finished, with their BLEU scores."""
    rows = []
    for run in runs:
        path = os.path.join(output_root, run["name"], "results.json")
        if os.path.exists(path):
            with open(path) as f:
                results = json.load(f)["results"]
            rows.append({**run, "test_bleu": results["test"]["bleu_tokenized"],
                         "test_sacrebleu": results["test"].get("sacrebleu_detok"),
                         "valid_bleu": results["validation"]["bleu_tokenized"], "params": results["params"]})
    return rows


def markdown_table(rows: list[dict]) -> str:
    def number(x):
        return "n/a" if x is None else f"{x:.2f}"

    lines = ["| kind | λ | SI | test BLEU (tok) | test sacreBLEU (detok, lc) | valid BLEU (tok) | params |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['coef']:g} | {'yes' if r['si'] else 'no'} | {number(r['test_bleu'])} | "
                     f"{number(r['test_sacrebleu'])} | {number(r['valid_bleu'])} | {r['params']:,} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    fig, ax = new_figure(figsize=(7, 4.5))
    colors = dict(zip(KINDS, ("tab:gray", "tab:blue", "tab:orange")))
    for si in (True, False):
        for kind in KINDS:
            points = sorted((r["coef"], r["test_bleu"]) for r in rows if r["kind"] == kind and r["si"] == si)
            if points:
                ax.plot(*zip(*points), LINE_STYLES[si], marker="o", color=colors[kind],
                        label=f"{kind}{'' if si else ' (no SI)'}")
        for r in rows:
            if r["kind"] == "none" and r["si"] == si:
                ax.axhline(r["test_bleu"], color="black", linestyle=LINE_STYLES[si], linewidth=0.8,
                           label=f"λ = 0{'' if si else ' (no SI)'}")
    ax.set_xscale("log")
    ax.set_xlabel("decay coefficient λ")
    ax.set_ylabel("test BLEU (tokenized)")
    ax.set_title("IWSLT-14 de-en: weight decay vs Frobenius decay")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    runs = grid(args.coefs, args.kinds, args.si)
    os.makedirs(args.output_root, exist_ok=True)
    run_missing({run["name"]: train_command(run, args.launcher, args.output_root, args.script_args) for run in runs},
                args.output_root, execute=args.run)
    rows = collect(runs, args.output_root)
    write_grid_report(rows, args.output_root, "sweep", markdown_table, plot)
    print(f"{len(rows)}/{len(runs)} runs finished; table and plot in {args.output_root}")
    return rows


if __name__ == "__main__":
    main()
