"""
Preemption-safe runs (issue 16) with two real processes (torchrun, gloo on CPU), under DDP and DeepSpeed ZeRO-2
and ZeRO-3: kills during saves and steps, each followed by `--resume_from_checkpoint last`, end with the uninterrupted
run's weights; a SIGTERM to ONE process stops both after the same step with one complete checkpoint.

Under ZeRO-3 (issue 23) the runs distil from a teacher, replicated on each process or sharded by ZeRO-3 inference
(`teacher_placement="zero3"`), and the kills fall on both sides of the KD stage's end, so a resume inside the stage
places the teacher again and one after it never loads it.
"""

from __future__ import annotations

import json

import pytest
from common import DS_CONFIGS
from fixtures import save_teacher
from test_checkpointing import (
    SAVE_PHASES,
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

pytestmark = pytest.mark.distributed
# ZeRO-3 builds the student under deepspeed.zero.Init, which needs DeepSpeed's own process group: Accelerate makes it
# for a DeepSpeed launch, not for use_cpu (MULTI_CPU), which run_args sets and ZeRO-2 tolerates.
ENGINES = {
    "ddp": {},
    "zero2": {"deepspeed": DS_CONFIGS["zero2"]},
    "zero3": {"deepspeed": DS_CONFIGS["zero3"], "use_cpu": "false"},
}


def engine(name: str) -> dict:
    if name != "ddp":
        pytest.importorskip("deepspeed")
    # 2 processes x 2 rows: the global batch of the single-process tests
    return {**ENGINES[name], "per_device_train_batch_size": 2}


@pytest.fixture
def tokenizer_dir(tmp_path, tokenizer) -> str:
    return save_tokenizer(tmp_path, tokenizer)


@pytest.fixture
def teacher_dir(tmp_path, tokenizer, teacher) -> str:
    return save_teacher(teacher, tokenizer, tmp_path / "teacher")


def kd_weights(out) -> dict[int, float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["kd_weight"] for h in history if "kd_weight" in h}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp", "zero2"])
def test_kills_under_two_processes_then_resume_exactly(tmp_path, tokenizer_dir, name):
    # optimizer.pt (DDP) / the ZeRO shards (ZeRO-2: the optimizer phase is DeepSpeed's save_checkpoint) cut short,
    # a kill of both processes while rank 0 renames, one during a rotation, one inside a step
    plan = kill_plan(seed=2, kills=4, max_steps=40, phases=("optimizer", "publish", "rotate", "step"))
    counts = run_with_kills(tmp_path, tokenizer_dir, plan, max_steps=40, nproc=2, **engine(name))
    assert counts == {"kills": 4, "during_saves": 3}
    if name == "zero2":
        ckpt = last_complete_checkpoint(tmp_path / "reference")
        assert "latest" in {p.name for p in (tmp_path / "reference" / ckpt).iterdir()}


@pytest.mark.parametrize("placement", ["replicate", "zero3"])
def test_zero3_kills_across_the_kd_end_then_resume_exactly(tmp_path, tokenizer_dir, teacher_dir, placement):
    """
    The fast variant: a ZeRO-3 student, the teacher replicated or sharded, the KD stage ending at step 8. The first
    kill cuts this process's optimizer shard short in the save of checkpoint-10 (resume from checkpoint-5, inside the
    KD stage: the teacher is placed again), the second kills both processes inside a step after the stage's end.
    """
    plan = [("optimizer", 10, 5), ("step", 12, 10)]
    kd = dict(teacher_model_name_or_path=teacher_dir, kd_steps=8, teacher_placement=placement)
    counts = run_with_kills(tmp_path, tokenizer_dir, plan, max_steps=15, nproc=2, **engine("zero3"), **kd)
    assert counts == {"kills": 2, "during_saves": 1}
    # logged every 5 steps: w at step 5 (inside the KD stage), 0 from the stage's end on, as in the uninterrupted run
    assert kd_weights(tmp_path / "out") == kd_weights(tmp_path / "reference") == {5: 0.5, 10: 0.0, 15: 0.0}


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["replicate", "zero3"])
def test_zero3_random_kills_then_resume_exactly(tmp_path, tokenizer_dir, teacher_dir, placement):
    """Every kind of moment in a save, then seeded random ones, across the KD stage's end at step 20."""
    plan = kill_plan(seed=23, kills=8, max_steps=60)
    kd = dict(teacher_model_name_or_path=teacher_dir, kd_steps=20, teacher_placement=placement)
    counts = run_with_kills(tmp_path, tokenizer_dir, plan, max_steps=60, nproc=2, **engine("zero3"), **kd)
    assert counts["kills"] == 8 and counts["during_saves"] >= len(SAVE_PHASES)
    steps = [step for _, step, _ in plan]
    assert min(steps) < 20 < max(steps), plan  # kills on both sides of the KD stage's end


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ddp", "zero2"])
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
