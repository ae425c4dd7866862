"""Running the project's scripts in subprocesses, as users run them: one process, or several CPU
processes under `accelerate launch` (gloo); and importing a recipe script to test its functions."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


def launcher(processes: int) -> list[str]:
    """`python -m accelerate.commands.launch` arguments for `processes` CPU processes.

    accelerate 1.x runs `--cpu` with one process whatever --num_processes says; on a machine without
    GPUs `--multi_gpu` starts the processes, and they train on the CPU over gloo."""
    return ["-m", "accelerate.commands.launch", "--multi_gpu" if processes > 1 else "--cpu",
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def run(args: list[str], launch: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run a script (under `launch`, e.g. launcher(2)) from the repository root; fail with its stderr."""
    result = subprocess.run([sys.executable, *(launch or []), *args], capture_output=True, text=True, env=ENV,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def load_recipe(task: str, script: str):
    """recipes/<task>/<script>.py as a module (recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{task}_{script}", os.path.join(ROOT, "recipes", task, f"{script}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
