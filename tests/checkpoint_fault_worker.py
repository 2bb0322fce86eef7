"""
salt-train (`salt_hf.cli.train.main`) with one fault injected at a chosen moment, for tests/test_checkpointing.py and
tests/distributed/test_checkpointing_distributed.py. Every moment is a point in the program, not a time, so a test
knows exactly what each kill hit.

    SALT_FAULT=<phase>:<step> python tests/checkpoint_fault_worker.py <salt-train arguments>

Phases (`step` is the optimizer step the run is at; save phases need a step that is saved):
    step          SIGKILL inside the training step after `step` steps (a forward/backward in flight)
    model         SIGKILL during the save of checkpoint-<step>, the model written, nothing else
    optimizer     ... optimizer.pt (DeepSpeed: the process's optimizer shard) written half (truncated), then SIGKILL
    rng           ... the RNG states written, the trainer state not
    state         ... trainer_state.json written half, then SIGKILL
    publish       ... every file and the marker written and fsync'd, SIGKILL just before the rename
    rotate        SIGKILL after checkpoint-<step> is published, while an old checkpoint is being deleted
    sigterm       SIGTERM to this process inside the training step after `step` steps (SALT_FAULT_RANK: only there)

A SIGKILL takes the whole launch at once (the test starts each launch in a session of its own), like a machine that
dies: under torchrun every worker and the agent go together (Linux: the workers are found in /proc).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from transformers.trainer_callback import TrainerState

import salt_hf.checkpointing as checkpointing
from salt_hf import SALTTrainer
from salt_hf.cli import train as train_cli

SAVE_PHASES = ("model", "optimizer", "rng", "state", "publish", "rotate")


# Under torchrun: the agent, read while it certainly lives (a worker whose agent died is handed to another parent).
AGENT = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None


def die() -> None:
    """SIGKILL to the whole launch at once: this process's group, or under torchrun (whose workers each have a
    session of their own) the agent first, then its other workers, then this process. The agent goes first because
    every rank may get here at the same moment: had two ranks killed each other before either reached the agent, the
    agent would live on and report a failed launch instead of dying with it."""
    sys.stdout.flush()
    sys.stderr.flush()
    if AGENT is None:
        os.killpg(os.getpgrp(), signal.SIGKILL)
    assert AGENT > 1, AGENT
    workers = [pid for pid in _children(AGENT) if pid != os.getpid()]  # empty once the agent is gone
    for pid in [AGENT, *workers]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # another rank got there first
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # /proc/<pid>/stat: "pid (name) state ppid ..."; the name may hold spaces, so split after it
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent:
                found.append(int(entry.name))
    return found


def truncate_half(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)


def wrap_method(cls, name: str, after) -> None:
    original = getattr(cls, name)

    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        after(self, *args, **kwargs)
        return result

    setattr(cls, name, wrapper)


def inject(phase: str, step: int) -> None:
    rank = int(os.environ.get("RANK", "0"))
    at_step = {"trainer": None}

    def saving(trainer) -> bool:
        return trainer.state.global_step == step

    if phase in ("step", "sigterm"):
        only_rank = os.environ.get("SALT_FAULT_RANK")

        def in_step(trainer, *args, **kwargs):
            if trainer.state.global_step == step and at_step["trainer"] is None:
                at_step["trainer"] = trainer
                if phase == "step":
                    die()
                elif only_rank is None or int(only_rank) == rank:
                    os.kill(os.getpid(), signal.SIGTERM)

        wrap_method(SALTTrainer, "training_step", in_step)
    elif phase == "model":
        wrap_method(SALTTrainer, "save_model", lambda t, *a, **k: saving(t) and k.get("_internal_call") and die())
    elif phase == "optimizer":

        def after_optimizer(trainer, output_dir):
            if saving(trainer):
                # optimizer.pt, or under DeepSpeed this process's optimizer shard (global_step<N>/..._optim_states.pt)
                written = [*Path(output_dir).glob("optimizer.pt"), *Path(output_dir).glob(f"*/*rank_{rank}_*optim*")]
                for path in written:
                    truncate_half(str(path))
                die()

        wrap_method(SALTTrainer, "_save_optimizer_and_scheduler", after_optimizer)
    elif phase == "rng":
        wrap_method(SALTTrainer, "_save_rng_state", lambda t, *a, **k: saving(t) and die())
    elif phase == "state":

        def after_state(state, json_path):
            if state.global_step == step and Path(json_path).parent.name.startswith(checkpointing.STAGING_PREFIX):
                truncate_half(json_path)
                die()

        wrap_method(TrainerState, "save_to_json", after_state)
    elif phase in ("publish", "rotate"):
        rename = os.rename

        def faulty_rename(src, dst):
            src, dst = Path(src), Path(dst)
            if phase == "publish" and src.name == f"{checkpointing.STAGING_PREFIX}checkpoint-{step}":
                die()
            rename(src, dst)
            if phase == "rotate" and dst.name.startswith(checkpointing.TRASH_PREFIX) and step_published(dst.parent):
                die()

        def step_published(folder: Path) -> bool:
            return checkpointing.is_complete_checkpoint(folder / f"checkpoint-{step}")

        checkpointing.os.rename = faulty_rename
    else:
        raise ValueError(f"SALT_FAULT phase {phase!r}")


if __name__ == "__main__":
    fault = os.environ.get("SALT_FAULT")
    if fault:
        phase, step = fault.split(":")
        inject(phase, int(step))
    sys.exit(train_cli.main(sys.argv[1:]))
