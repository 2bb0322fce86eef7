"""
What the distributed tests and their worker scripts share: tiny models, the data of one step, the launch command. The
workers find this module beside them and tests/fixtures.py through the PYTHONPATH of `launch_env`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from fixtures import make_llama
from transformers import LlamaForCausalLM

from salt_hf.launch import exit_launched_process

ROOT = Path(__file__).resolve().parents[2]
DS_CONFIGS = {name: str(ROOT / "deepspeed_configs" / f"{name}.json") for name in ("zero2", "zero3")}
VOCAB, SEQ = 96, 24
SUPERVISED = [24, 5, 17, 2]  # unequal supervised lengths: the step must weigh tokens, not sequences
WORKER_THREADS = 1  # intra-op threads of each launched process: two processes share the CI machine's cores


def llama(hidden: int, layers: int, seed: int, head_scale: float = 1.0) -> LlamaForCausalLM:
    return make_llama(VOCAB, hidden, layers, seed, max_pos=64, head_scale=head_scale)


def student_model() -> LlamaForCausalLM:
    return llama(32, 2, seed=0)


def teacher_model() -> LlamaForCausalLM:
    # A larger output head makes the teacher's distributions peaked and far from the student's: KD >> rounding.
    return llama(16, 1, seed=1, head_scale=40.0)


def step_rows(n: int = 4) -> list[dict[str, list[int]]]:
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    for i, k in enumerate(SUPERVISED[:n]):
        labels[i, k:] = -100
    return [{"input_ids": i, "labels": lab} for i, lab in zip(ids.tolist(), labels.tolist(), strict=True)]


def step_dataset(n: int = 4):
    from datasets import Dataset

    return Dataset.from_list(step_rows(n))


@contextlib.contextmanager
def worker_threads():
    """
    Runs the block with the launched processes' thread count. A reference computed in the test's process then runs
    every kernel with the workers' split among threads (a reduction split among threads adds its partial sums in
    another order), so it differs from them only by what the test is about, whatever the number of cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(WORKER_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def free_port() -> int:
    """A port free now; another process may take it before the launch binds it (the caller retries on EADDRINUSE)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env() -> dict[str, str]:
    """
    The test's environment (conftest.py's offline settings and datasets cache included) for CPU-only processes with
    WORKER_THREADS threads each, tests/ on their import path.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": str(WORKER_THREADS),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def torchrun(
    script: str | Path,
    args: list[str],
    nproc: int = 2,
    launcher: list[str] | None = None,
    timeout: float = 600,
    cwd: Path | None = None,
) -> tuple[subprocess.CompletedProcess, float]:
    """Runs `script` under `torchrun --standalone --nproc_per_node nproc` (real processes, gloo); returns (proc, s)."""
    launcher = launcher or ["--standalone", "--nproc_per_node", str(nproc)]
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, str(script), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd or ROOT, env=launch_env(), capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - start


def check(proc: subprocess.CompletedProcess) -> None:
    output = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-8000:]}"
    assert proc.returncode == 0, f"exit {proc.returncode}\n{output}"


def exit_worker() -> None:
    """
    The end of every worker: all ranks leave the process group together and the process exits without the
    interpreter's teardown, during which a gloo thread that torch keeps alive could still ask for the GIL and abort
    the process (issue 23; `salt_hf.launch.exit_launched_process`). Never returns.
    """
    exit_launched_process(0)
