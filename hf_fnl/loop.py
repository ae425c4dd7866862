"""Pieces of an accelerate training loop that the recipes share: an endless batch stream,
checkpoints that remember their update count, a clean end of a distributed run, and what their
grid drivers share: the command line, the run-what-is-missing loop and the table + plot."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Iterable, Iterator

__all__ = ["endless", "save_checkpoint", "load_checkpoint", "finish", "grid_parser", "parse_grid_args", "run_missing",
           "write_grid_report"]

STEP_FILE = "step.txt"


def endless(dataloader: Iterable) -> Iterator:
    """The dataloader's batches, epoch after epoch (each epoch iterates, and so reshuffles, anew)."""
    while True:
        yield from dataloader


def save_checkpoint(accelerator, output_dir: str, step: int) -> str:
    """accelerator.save_state into output_dir/checkpoint-<step>, with the update count beside it."""
    directory = os.path.join(output_dir, f"checkpoint-{step}")
    accelerator.save_state(directory)
    if accelerator.is_main_process:
        with open(os.path.join(directory, STEP_FILE), "w") as f:
            f.write(str(step))
    return directory


def load_checkpoint(accelerator, directory: str) -> int:
    """Restore a save_checkpoint directory; returns the update count to continue from."""
    accelerator.load_state(directory)
    with open(os.path.join(directory, STEP_FILE)) as f:
        return int(f.read())


def finish(accelerator) -> None:
    """End the run on every process together: free the prepared (DDP-wrapped) objects, whose reducers
    hold the process group, then end the trackers and destroy the group. Left to garbage collection
    at exit, gloo's process-group destructor can wait forever on a peer process that has already
    exited. The caller must hold no reference to the wrapped model (unwrap it first)."""
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # drops accelerate's references and collects them
    accelerator.end_training()


def grid_parser(description: str, script: str) -> argparse.ArgumentParser:
    """The command line every grid driver starts from: --output-root, --run, --launcher, and
    `-- <the arguments every <script> run gets>` (args.script_args after parse_grid_args)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-root", required=True)
    p.add_argument("--run", action="store_true", help="train the missing runs (otherwise only collect and plot)")
    p.add_argument("--launcher", default=shlex.quote(sys.executable), help='e.g. "accelerate launch"')
    p.add_argument("script_args", nargs=argparse.REMAINDER, help=f"-- then the arguments every {script} run gets")
    return p


def parse_grid_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.script_args[:1] == ["--"]:
        args.script_args = args.script_args[1:]
    return args


def run_missing(commands: dict[str, list[str]], output_root: str, execute: bool) -> None:
    """A grid driver's runs ({name: command writing output_root/name/results.json}), one after the
    other, skipping those whose results.json exists (an interrupted grid resumes); with
    execute=False only print the commands (to run them elsewhere)."""
    for i, (name, command) in enumerate(commands.items(), 1):
        if os.path.exists(os.path.join(output_root, name, "results.json")):
            continue
        print(f"[{i}/{len(commands)}] {shlex.join(command)}", flush=True)
        if execute:
            subprocess.run(command, check=True)


def write_grid_report(rows: list[dict], output_root: str, stem: str, markdown_table, plot) -> str:
    """output_root/<stem>.md with markdown_table(rows) and, once a run has finished, <stem>.png
    drawn by plot(rows, path); returns the table."""
    table = markdown_table(rows)
    with open(os.path.join(output_root, f"{stem}.md"), "w") as f:
        f.write(table)
    if rows:
        plot(rows, os.path.join(output_root, f"{stem}.png"))
    return table
