"""Shared tail of the benchmark scripts: print the JSON report and, with --out, write it."""

from __future__ import annotations

import json


def emit(report: dict, out: str | None) -> None:
    print(json.dumps(report, indent=2))
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
