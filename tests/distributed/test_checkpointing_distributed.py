"""
Preemption-safe runs (issue 16) with two real processes (torchrun, gloo on CPU), under DDP and DeepSpeed ZeRO-2:
kills during saves and steps, each followed by `--resume_from_checkpoint last`, end with the uninterrupted run's
weights; a SIGTERM to ONE process stops both after the same step with one complete checkpoint.
"""

from __future__ import annotations

import pytest
from common import DS_CONFIGS
from test_checkpointing import (
    SIGTERM_EXIT_CODE,
    kill_plan,
    last_complete_checkpoint,
    launch,
    output,
    run_args,
    run_with_kills,
    save_tokenizer,
    weights_diff,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
ENGINES = {"ddp": {}, "zero2": {"deepspeed": DS_CONFIGS["zero2"]}}


def engine(name: str) -> dict:
    if name == "zero2":
        pytest.importorskip("deepspeed")
    # 2 processes x 2 rows: the global batch of the single-process tests
    return {**ENGINES[name], "per_device_train_batch_size": 2}


@pytest.fixture
def tokenizer_dir(tmp_path, tokenizer) -> str:
    return save_tokenizer(tmp_path, tokenizer)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_kills_under_two_processes_then_resume_exactly(tmp_path, tokenizer_dir, name):
    # optimizer.pt (DDP) / the ZeRO shards (ZeRO-2: the optimizer phase is DeepSpeed's save_checkpoint) cut short,
    # a kill of both processes while rank 0 renames, one during a rotation, one inside a step
    plan = kill_plan(seed=2, kills=4, max_steps=40, phases=("optimizer", "publish", "rotate", "step"))
    counts = run_with_kills(tmp_path, tokenizer_dir, plan, max_steps=40, nproc=2, **engine(name))
    assert counts == {"kills": 4, "during_saves": 3}
    if name == "zero2":
        ckpt = last_complete_checkpoint(tmp_path / "reference")
        assert "latest" in {p.name for p in (tmp_path / "reference" / ckpt).iterdir()}


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_sigterm_to_one_process_stops_both_after_the_same_step(tmp_path, tokenizer_dir, name):
    max_steps = 20
    reference = launch(run_args(tmp_path, tokenizer_dir, "reference", max_steps, **engine(name)), nproc=2)
    assert reference.returncode == 0, output(reference)
    args = run_args(tmp_path, tokenizer_dir, "out", max_steps, **engine(name))
    out = tmp_path / "out"
    proc = launch(args, fault="sigterm:7", nproc=2, SALT_FAULT_RANK="1")
    # both processes exit with SIGTERM_EXIT_CODE, which torchrun reports as a failed launch
    assert proc.returncode != 0 and f"exitcode  : {SIGTERM_EXIT_CODE}" in proc.stderr, output(proc)
    # rank 0 was not signalled: it logs the stop, agreed on at the end of step 8
    assert "stopped by SIGTERM after step 8" in proc.stdout + proc.stderr, output(proc)
    assert last_complete_checkpoint(out) == str(out / "checkpoint-8")
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (out / "checkpoint-8").iterdir()}
    final = launch(args + ["--resume_from_checkpoint", "last"], nproc=2)
    assert final.returncode == 0, output(final)
    assert weights_diff(out, tmp_path / "reference") <= 1e-6
