"""SI and FD, together, alone and neither, for a low-rank ResNet over several seeds (the paper's ResNet ablation).

Runs `train.py <its flags> <the arguments after -->` into <output-root>/<setting>-seed<k> for the
settings si+fd, si, fd, neither (all at the rank scale given after --) and, with --dense, the dense
network; finished runs (results.json) are not repeated. Writes <output-root>/ablation.md (test
accuracy mean ± standard deviation over seeds, parameters) and ablation.png (the same as bars, with
every seed's accuracy as a dot).

    python recipes/resnet/ablation.py --output-root runs/ablation --seeds 0,1,2 --dense --run -- \\
        --data data/digits.npz --depth 20 --rank-scale 0.1 --epochs 30 --cpu
"""

from __future__ import annotations

import json
import os
import shlex
import statistics

from hf_fnl.loop import grid_parser, parse_grid_args, run_missing, write_grid_report
from hf_fnl.plotting import new_figure, save_figure

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
SETTINGS = {
    "si+fd": ["--spectral", "--decay", "fd"],
    "si": ["--spectral", "--decay", "wd"],
    "fd": ["--decay", "fd"],
    "neither": ["--decay", "wd"],
}


def parse_args(argv=None):
    p = grid_parser(__doc__, "train.py")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--dense", action="store_true", help="also train the dense network (the rank scale is dropped)")
    args = parse_grid_args(p, argv)
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    return args


def without_rank_scale(train_args: list[str]) -> list[str]:
    out, skip = [], False
    for arg in train_args:
        if skip or arg.startswith("--rank-scale"):
            skip = arg == "--rank-scale"
            continue
        out.append(arg)
    return out


def commands(args) -> dict[str, list[str]]:
    launcher = shlex.split(args.launcher)
    settings = {name: [*args.script_args, *flags] for name, flags in SETTINGS.items()}
    if args.dense:
        settings["dense"] = without_rank_scale(args.script_args)
    return {f"{name}-seed{seed}": [*launcher, TRAIN, *flags, "--seed", str(seed),
                                   "--output-dir", os.path.join(args.output_root, f"{name}-seed{seed}")]
            for name, flags in settings.items() for seed in args.seeds}


def collect(names: list[str], output_root: str) -> list[dict]:
    """Per setting: the finished seeds' test accuracies and the parameter count."""
    by_setting: dict[str, dict] = {}
    for name in names:
        path = os.path.join(output_root, name, "results.json")
        if os.path.exists(path):
            with open(path) as f:
                results = json.load(f)["results"]
            setting = name.rsplit("-seed", 1)[0]
            row = by_setting.setdefault(setting, {"setting": setting, "accuracies": [], "params": results["params"],
                                                  "dense_params": results["dense_params"]})
            row["accuracies"].append(results["test_accuracy"])
    return list(by_setting.values())


def markdown_table(rows: list[dict]) -> str:
    lines = ["| setting | test accuracy (mean ± std) | seeds | parameters |", "|---|---|---|---|"]
    for r in rows:
        acc = r["accuracies"]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        lines.append(f"| {r['setting']} | {100 * statistics.mean(acc):.2f} ± {100 * std:.2f} % | {len(acc)} | "
                     f"{r['params']:,} ({r['params'] / r['dense_params']:.0%}) |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    fig, ax = new_figure(figsize=(7, 4))
    for i, r in enumerate(rows):
        acc = [100 * a for a in r["accuracies"]]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        ax.bar(i, statistics.mean(acc), yerr=std, color="tab:blue" if r["setting"] != "dense" else "tab:gray",
               alpha=0.6, capsize=4)
        ax.plot([i] * len(acc), acc, "k.", markersize=5)
    ax.set_xticks(range(len(rows)), [r["setting"] for r in rows])
    low = min(100 * a for r in rows for a in r["accuracies"])
    ax.set_ylim(max(0.0, low - 2), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("low-rank ResNet: spectral initialization (SI) and Frobenius decay (FD)")
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    os.makedirs(args.output_root, exist_ok=True)
    runs = commands(args)
    run_missing(runs, args.output_root, execute=args.run)
    rows = collect(list(runs), args.output_root)
    print(write_grid_report(rows, args.output_root, "ablation", markdown_table, plot))
    return rows


if __name__ == "__main__":
    main()
