"""benchmarks/gpu_check/gpu_check.py at toy sizes on CPU (`--device cpu --small`): the one-call GPU check of issue 22
is known to run, and what runs on CPU passes (the fused path against the logits path, against TRL's loss where
installed, compiled against eager, the FSDP2 launch); the GPU figures come from `--device cuda` on a GPU machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.distributed  # its FSDP2 part launches torchrun
def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    script = ROOT / "benchmarks" / "gpu_check" / "gpu_check.py"
    cmd = [sys.executable, str(script), "--device", "cpu", "--small", "--threads", "1"]
    cmd += ["--out", str(out), "--work", str(tmp_path / "work")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    parts = json.loads(out.read_text())["parts"]
    assert list(parts) == ["step", "losses", "fsdp2", "compile", "liger"]
    for name in ("step", "losses", "compile"):
        assert parts[name]["status"] == "pass", (name, parts[name])
    step = parts["step"]["figures"]["512"]["fp32"]
    assert step["fused_vs_logits"]["max_abs_diff"] <= 1e-5
    assert step["control_plain_vs_logits"]["update_rel_diff"] > 0.1  # the control: another objective, far away
    frames = parts["compile"]["figures"]["frames_after_each_step"]
    assert frames[1] == frames[-1] > 0
    # FSDP through Accelerate runs as DDP on CPU: the launch and the step ran, the FSDP2 figures need a GPU
    fsdp2 = parts["fsdp2"]
    assert fsdp2["status"] == "skipped" and fsdp2["reason"].startswith("CPU"), fsdp2
    assert fsdp2["figures"]["implementation"] == "fused_linear"
    assert fsdp2["figures"]["vs_unsharded"]["max_abs_diff"] <= 1e-5
    assert parts["liger"]["status"] in ("pass", "skipped"), parts["liger"]
    trl = parts["losses"]["figures"]["512"]["trl"]
    assert isinstance(trl, str) or trl["rel_diff_to_salt_hf"] <= 1e-4
