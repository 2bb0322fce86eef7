"""Transient memory of one variant per fresh process, for the study's cost scripts (step_cost.py's method on CPU).

A script runs itself with `--_child <args...> <variant>` for each variant; the child prints a JSON line whose
`transient_mib` is its one step's peak resident set above the resident set before that step. malloc is told to return
freed memory at once, so that the resident set follows the live tensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def transient_peaks(script: str, child_args: list[str], variants: tuple[str, ...], options: list[str]) -> dict:
    """`transient_mib_<variant>` for each variant and each one's ratio to the first (the plain step or loss)."""
    out = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    for variant in variants:
        cmd = [sys.executable, script, "--_child", *child_args, variant, *options]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[f"transient_mib_{variant}"] = json.loads(done.stdout.strip().splitlines()[-1])["transient_mib"]
    first = out[f"transient_mib_{variants[0]}"]
    for variant in variants[1:]:
        out[f"{variant}_transient_over_{variants[0]}"] = out[f"transient_mib_{variant}"] / first
    return out
