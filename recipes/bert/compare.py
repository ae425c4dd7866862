"""LAMB at full MHA vs LAMB and FLAMBé at halved MHA, each for the same budget of training minutes.

The paper's Table 4 question at a size one machine can answer: does halving every attention head
cost held-out masked-LM quality, and does FLAMBé (Frobenius decay on the OV factor pairs) get it
back? Every run is `pretrain.py <its flags> <the arguments after -->` into <output-root>/<name>;
give the budget there (`--max-minutes`, which also makes the faster halved model take more steps)
and `--eval-steps` for the curves. A run whose results.json exists is not repeated. Writes
<output-root>/comparison.md (held-out MLM loss and accuracy, steps, minutes, tokens/s, parameters)
and comparison.png (held-out MLM loss against training minutes).

    python recipes/bert/compare.py --output-root runs/compare --run --launcher "accelerate launch" -- \\
        --data-dir data/docs128 --preset small --global-batch 256 --per-device-batch 256 --lr 2e-3 \\
        --warmup 0.1 --max-minutes 20 --eval-steps 200
"""

from __future__ import annotations

import json
import os
import shlex

from hf_fnl.loop import grid_parser, parse_grid_args, run_missing, write_grid_report
from hf_fnl.plotting import new_figure, save_figure

PRETRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py")
RUNS = {
    "lamb-full": ["--optimizer", "lamb"],
    "lamb-half": ["--optimizer", "lamb", "--mha-rank", "0.5"],
    "flambe-half": ["--optimizer", "flambe", "--mha-rank", "0.5"],
    "flambe-full": ["--optimizer", "flambe", "--mha-rank", "1.0"],
}
DEFAULT_RUNS = "lamb-full,lamb-half,flambe-half"


def parse_args(argv=None):
    p = grid_parser(__doc__, "pretrain.py")
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"comma-separated, among {', '.join(RUNS)}")
    args = parse_grid_args(p, argv)
    args.runs = [r for r in args.runs.split(",") if r]
    if bad := [r for r in args.runs if r not in RUNS]:
        p.error(f"--runs: {bad} are not among {list(RUNS)}")
    return args


def collect(names: list[str], output_root: str) -> list[dict]:
    """The finished runs: final held-out numbers, speed and the held-out curve."""
    rows = []
    for name in names:
        path = os.path.join(output_root, name, "results.json")
        if os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            history = record["history"]
            rows.append({"name": name, **record["results"], "evals": record.get("evals", []),
                         "tokens_per_s": history[-1]["tokens_per_s"] if history else None})
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| run | held-out MLM loss | held-out MLM accuracy | steps | training minutes | tokens/s | parameters |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        speed = "n/a" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:,.0f}"
        lines.append(f"| {r['name']} | {r['eval_mlm_loss']:.4f} | {r['eval_mlm_accuracy']:.4f} | {r['steps']} | "
                     f"{r['train_minutes']:.1f} | {speed} | {r['params']:,} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    fig, (by_time, by_step) = new_figure(1, 2, figsize=(11, 4.2))
    for r in rows:
        minutes, steps, losses = zip(*((e["minutes"], e["step"], e["eval_mlm_loss"]) for e in r["evals"]))
        line, = by_time.plot(minutes, losses, marker=".", label=r["name"])
        by_step.plot(steps, losses, marker=".", color=line.get_color(), label=r["name"])
    by_time.set_xlabel("training minutes")
    by_step.set_xlabel("optimizer step")
    for ax in (by_time, by_step):
        ax.set_ylabel("held-out MLM loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("BERT pretraining: full vs halved MHA, LAMB vs FLAMBé")
    save_figure(fig, path)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    os.makedirs(args.output_root, exist_ok=True)
    run_missing({name: [*shlex.split(args.launcher), PRETRAIN, *args.script_args, *RUNS[name],
                        "--output-dir", os.path.join(args.output_root, name)] for name in args.runs},
                args.output_root, execute=args.run)
    rows = collect(args.runs, args.output_root)
    print(write_grid_report(rows, args.output_root, "comparison", markdown_table, plot))
    return rows


if __name__ == "__main__":
    main()
