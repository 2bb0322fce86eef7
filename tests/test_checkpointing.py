"""
Preemption-safe runs (issue 16): checkpoints are complete or invisible, `last` resumes from the newest complete one,
SIGTERM saves first. The fault tests kill salt-train at chosen moments (tests/checkpoint_fault_worker.py), restart it
with `--resume_from_checkpoint last` each time and compare its final weights with an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checkpoint_fault_worker import SAVE_PHASES
from fixtures import TINY_LLAMA, config, dataset, make_llama, save_teacher
from safetensors.torch import load_file

from salt_hf import SALTConfig, SALTTrainer
from salt_hf.checkpointing import (
    COMPLETE_MARKER,
    SIGTERM_EXIT_CODE,
    atomic_write_text,
    is_complete_checkpoint,
    last_complete_checkpoint,
    publish_checkpoint,
    rotate_complete_checkpoints,
)
from salt_hf.cli import train as train_cli

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("checkpoint_fault_worker.py")
TINY = TINY_LLAMA
SAVE_STEPS, SAVE_TOTAL_LIMIT = 5, 2
KILLED = -signal.SIGKILL  # subprocess's return code of a process killed by SIGKILL


# ---- the pieces ---------------------------------------------------------------------------------------------------


def make_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint-<step> folder, published the way the trainer does, or written in place and cut short."""
    final = folder / f"checkpoint-{step}"
    staging = folder / f".tmp-checkpoint-{step}" if complete else final
    staging.mkdir(parents=True)
    (staging / "optimizer.pt").write_bytes(b"x" * (100 if complete else 37))
    if complete:
        (staging / "trainer_state.json").write_text("{}")
        publish_checkpoint(staging, final, step)
    return final


def test_published_checkpoint_is_complete_and_a_changed_one_is_not(tmp_path):
    ckpt = make_checkpoint(tmp_path, 5)
    assert is_complete_checkpoint(ckpt) and not (tmp_path / ".tmp-checkpoint-5").exists()
    assert set(json.loads((ckpt / COMPLETE_MARKER).read_text())["files"]) == {"optimizer.pt", "trainer_state.json"}
    (ckpt / "optimizer.pt").write_bytes(b"x" * 50)  # truncated after the fact
    assert not is_complete_checkpoint(ckpt)
    assert not is_complete_checkpoint(make_checkpoint(tmp_path, 10, complete=False))
    (tmp_path / "checkpoint-15").mkdir()
    (tmp_path / "checkpoint-15" / COMPLETE_MARKER).write_text('{"files": ')  # a marker cut short
    assert not is_complete_checkpoint(tmp_path / "checkpoint-15")


def test_last_complete_checkpoint_skips_and_keeps_incomplete_folders(tmp_path, caplog):
    make_checkpoint(tmp_path, 5)
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 999, complete=False)
    (tmp_path / ".tmp-checkpoint-15").mkdir()  # a save cut short before its rename: invisible
    with caplog.at_level(logging.WARNING):
        assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert "checkpoint-999" in caplog.text
    assert (tmp_path / "checkpoint-999" / "optimizer.pt").stat().st_size == 37
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_rotation_deletes_only_old_complete_checkpoints(tmp_path):
    for step in (5, 10, 15, 20):
        make_checkpoint(tmp_path, step)
    make_checkpoint(tmp_path, 999, complete=False)
    (tmp_path / ".trash-checkpoint-1").mkdir()  # the leftover of a kill during a deletion
    rotate_complete_checkpoints(tmp_path, 2, keep=str(tmp_path / "checkpoint-5"))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-15", "checkpoint-20", "checkpoint-5", "checkpoint-999"]


def test_atomic_write_text_replaces_whole(tmp_path):
    path = tmp_path / "a.yaml"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["a.yaml"]


def test_save_on_sigterm_is_off_in_the_library_and_on_in_salt_train(tmp_path):
    assert SALTConfig(output_dir=str(tmp_path)).save_on_sigterm is False
    base = ["--output_dir", str(tmp_path), "--use_cpu", "true"]
    _, _, args, _ = train_cli.parse_args(base, defaults=train_cli.CLI_DEFAULTS)
    assert args.save_on_sigterm is True
    _, _, args, _ = train_cli.parse_args(base + ["--save_on_sigterm", "false"], defaults=train_cli.CLI_DEFAULTS)
    assert args.save_on_sigterm is False
    with pytest.raises(ValueError, match="save_on_sigterm"):
        SALTConfig(output_dir=str(tmp_path), save_on_sigterm="yes")


# ---- salt-train runs ----------------------------------------------------------------------------------------------


def save_tokenizer(tmp_path: Path, tokenizer) -> str:
    """The tokenizer's folder, and the tiny student's config beside it, for `run_args`."""
    path = tmp_path / "tokenizer"
    tokenizer.save_pretrained(path)
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    return str(path)


@pytest.fixture
def tokenizer_dir(tmp_path, tokenizer) -> str:
    return save_tokenizer(tmp_path, tokenizer)


def run_args(tmp_path: Path, tokenizer_dir: str, out: str, max_steps: int, **extra) -> list[str]:
    args = {
        "output_dir": str(tmp_path / out),
        "model_config": str(tmp_path / "tiny.json"),
        "tokenizer_name_or_path": tokenizer_dir,
        "max_corpus_bytes": 300_000,
        "seq_length": 32,
        "per_device_train_batch_size": 4,
        "max_steps": max_steps,
        "logging_steps": 5,
        "eval_strategy": "no",
        "save_strategy": "steps",
        "save_steps": SAVE_STEPS,
        "save_total_limit": SAVE_TOTAL_LIMIT,
        "report_to": "none",
        "use_cpu": "true",
        "disable_tqdm": "true",
        "seed": 0,
    }
    args.update(extra)
    return [x for k, v in args.items() for x in (f"--{k}", str(v))]


def launch(args: list[str], fault: str | None = None, nproc: int = 1, **env) -> subprocess.CompletedProcess:
    """salt-train under the fault worker, in a session of its own (a fault's SIGKILL takes its process group)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    env.pop("SALT_FAULT", None)
    if fault:
        env["SALT_FAULT"] = fault
    if nproc == 1:
        cmd = [sys.executable, str(WORKER), *args]
    else:
        env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
        env.pop("ACCELERATE_USE_CPU", None)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        cmd += [str(ROOT / "tests" / "distributed" / "cpu_deepspeed.py"), str(WORKER), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, start_new_session=True)


def output(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def kill_plan(seed: int, kills: int, max_steps: int, phases=("step", *SAVE_PHASES)) -> list[tuple[str, int, int]]:
    """
    (phase, step, the checkpoint `last` must find after the kill) for `kills` kills, each reachable from the previous
    one's resume point. A kill inside a save leaves the previous save as the newest complete checkpoint; a kill while
    an old checkpoint is being deleted comes after the new one is published.
    """
    rng = random.Random(seed)
    plan, resume = [], 0
    for i in range(kills):
        phase = phases[i % len(phases)] if i < len(phases) else rng.choice(phases)
        if phase == "step":
            step = resume + rng.randint(0, 3 * SAVE_STEPS)
            after = step // SAVE_STEPS * SAVE_STEPS
        else:
            # a kill in a save needs an earlier checkpoint to resume from; a rotation needs SAVE_TOTAL_LIMIT complete
            # checkpoints besides the new one
            first = max(resume + SAVE_STEPS, (SAVE_TOTAL_LIMIT + 1 if phase == "rotate" else 2) * SAVE_STEPS)
            step = first + SAVE_STEPS * rng.randint(0, 2)
            after = step if phase == "rotate" else step - SAVE_STEPS
        assert step < max_steps - 1, "the plan does not fit in the run: lower kills or raise max_steps"
        plan.append((phase, step, after))
        resume = after
    return plan


def weights_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert set(wa) == set(wb)
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def run_with_kills(tmp_path, tokenizer_dir, plan, max_steps: int, nproc: int = 1, **extra) -> dict[str, int]:
    """The uninterrupted run, then the killed and restarted one; returns how many kills landed where."""
    reference = launch(run_args(tmp_path, tokenizer_dir, "reference", max_steps, **extra), nproc=nproc)
    assert reference.returncode == 0, output(reference)
    out = tmp_path / "out"
    args = run_args(tmp_path, tokenizer_dir, "out", max_steps, **extra)
    counts = {"kills": 0, "during_saves": 0}
    for i, (phase, step, after) in enumerate(plan):
        proc = launch(args + (["--resume_from_checkpoint", "last"] if i else []), fault=f"{phase}:{step}", nproc=nproc)
        # killed at the planned moment: neither finished nor stopped by an error (a failed resume exits 2 or 1)
        assert proc.returncode == KILLED, f"kill {i} ({phase}:{step})\n{output(proc)}"
        assert last_complete_checkpoint(out) == str(out / f"checkpoint-{after}"), f"after kill {i} ({phase}:{step})"
        counts["kills"] += 1
        counts["during_saves"] += phase in SAVE_PHASES
    final = launch(args + ["--resume_from_checkpoint", "last"], nproc=nproc)
    assert final.returncode == 0, output(final)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == max_steps
    diff = weights_diff(out, tmp_path / "reference")
    print(f"{counts['kills']} kills ({counts['during_saves']} during saves), max |diff| vs uninterrupted = {diff:.3g}")
    assert diff <= 1e-6
    return counts


@pytest.fixture
def teacher_dir(tmp_path, tokenizer, teacher) -> str:
    return save_teacher(teacher, tokenizer, tmp_path / "teacher")


def test_three_kills_during_saves_then_resume_exactly(tmp_path, tokenizer_dir, teacher_dir):
    """
    The fast variant: optimizer.pt cut short (the issue's case), a save killed before its rename, a rotation; with a
    teacher whose KD stage ends at step 20, so the kills fall before and after its end.
    """
    plan = kill_plan(seed=0, kills=3, max_steps=40, phases=("optimizer", "publish", "rotate"))
    kd = dict(teacher_model_name_or_path=teacher_dir, kd_steps=20)
    assert run_with_kills(tmp_path, tokenizer_dir, plan, max_steps=40, **kd) == {"kills": 3, "during_saves": 3}
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    weights = {h["step"]: h["kd_weight"] for h in history if "kd_weight" in h}
    assert weights == {5: 0.5, 10: 0.5, 15: 0.5, 20: 0.5, 25: 0.0, 30: 0.0, 35: 0.0, 40: 0.0}  # the KD stage's end


@pytest.mark.slow
def test_two_dozen_random_kills_then_resume_exactly(tmp_path, tokenizer_dir, teacher_dir):
    """Every kind of moment first (in a step, each stage of a save, a rotation), then seeded random ones; KD to 100."""
    plan = kill_plan(seed=16, kills=24, max_steps=300)
    kd = dict(teacher_model_name_or_path=teacher_dir, kd_steps=100)
    counts = run_with_kills(tmp_path, tokenizer_dir, plan, max_steps=300, **kd)
    assert counts["kills"] == 24 and counts["during_saves"] >= 12


def test_half_written_checkpoint_is_skipped_named_and_kept(tmp_path, tokenizer_dir, caplog):
    args = run_args(tmp_path, tokenizer_dir, "out", 10, save_total_limit=1)
    assert train_cli.main(args) == 0
    out = tmp_path / "out"
    planted = make_checkpoint(out, 999, complete=False)  # a truncated optimizer.pt and no trainer_state.json
    with caplog.at_level(logging.WARNING):
        resumed = run_args(tmp_path, tokenizer_dir, "out", 15, save_total_limit=1)
        assert train_cli.main(resumed + ["--resume_from_checkpoint", "last"]) == 0
    assert "checkpoint-999" in caplog.text and "checkpoint-10" in caplog.text
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 15
    assert (planted / "optimizer.pt").stat().st_size == 37 and not (planted / "trainer_state.json").exists()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-15", "checkpoint-999"]


def test_sigterm_saves_at_the_next_step_boundary_then_resumes_exactly(tmp_path, tokenizer_dir):
    max_steps = 20
    reference = launch(run_args(tmp_path, tokenizer_dir, "reference", max_steps))
    assert reference.returncode == 0, output(reference)
    args = run_args(tmp_path, tokenizer_dir, "out", max_steps)
    out = tmp_path / "out"
    # the signal arrives inside step 8 (after 7 steps): step 8 finishes, checkpoint-8 is saved (not a save step)
    proc = launch(args, fault="sigterm:7")
    assert proc.returncode == SIGTERM_EXIT_CODE, output(proc)
    assert "stopped by SIGTERM after step 8" in proc.stderr
    assert last_complete_checkpoint(out) == str(out / "checkpoint-8")
    assert not (out / "model.safetensors").exists()  # an unfinished run exports no final model
    final = launch(args + ["--resume_from_checkpoint", "last"])
    assert final.returncode == 0, output(final)
    assert weights_diff(out, tmp_path / "reference") <= 1e-6


def test_sigterm_handler_never_outlives_its_run_nor_holds_forked_children(tmp_path, tokenizer, token_stream):
    """
    A run that raises restores the previous handler (on_train_end is never called then), and while the handler is
    installed a forked process (e.g. a multiprocessing pool worker that its pool stops with SIGTERM) still stops.
    """
    before = signal.getsignal(signal.SIGTERM)
    args = config(tmp_path, max_steps=2, per_device_train_batch_size=2, save_on_sigterm=True)
    trainer = SALTTrainer(
        model=make_llama(len(tokenizer), 32, 2, seed=0), args=args, train_dataset=dataset(token_stream, 4)
    )

    def injected(*args, **kwargs):
        raise RuntimeError("injected")

    trainer.compute_loss = injected
    with pytest.raises(RuntimeError, match="injected"):
        trainer.train()
    assert signal.getsignal(signal.SIGTERM) is before

    callback = trainer.sigterm_callback
    callback.on_train_begin(args, trainer.state, trainer.control)
    try:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: waits for signals; were SIGTERM only to set the flag, it would wait on
            os.write(ready_w, b"1")  # past CPython's after-fork set-up, which drops signals pending until then
            while True:
                signal.pause()
        os.read(ready_r, 1)
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):  # up to 20 s for the child to go
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("a forked child ignored SIGTERM")
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status
        assert not callback._requested  # the run's own flag is untouched by the child's signal
    finally:
        callback.restore()
    assert signal.getsignal(signal.SIGTERM) is before
