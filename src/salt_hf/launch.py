"""The launch: checks of what it decides, and the end of a launched process.

`check_launch` covers what depends on the launch (processes, DeepSpeed / FSDP from `accelerate launch`, writable
folders); `SALTConfig.__post_init__` checks what its fields alone decide, and `SALTTrainer` runs these when it is
built, before `Trainer.__init__` creates the output folder. Each raises `ValueError` naming the problem and the fix.
`exit_launched_process` ends a process of a multi-process launch (see there why it skips the interpreter's teardown).
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import NoReturn

import torch.distributed as dist
from accelerate.utils import parse_flag_from_env

from .config import SALTConfig

# What DeepSpeed's `init_distributed` reads to join a launch (deepspeed/comm/comm.py); without them and without a
# process group it looks for MPI, and fails with "No module named 'mpi4py'" where mpi4py is not installed.
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")
LAUNCH_HINT = "accelerate launch --num_processes N, torchrun --nproc_per_node N or deepspeed --num_gpus N"


def launched() -> bool:
    """Whether this process belongs to a launch DeepSpeed can join: a process group, or a launcher's environment."""
    return (dist.is_available() and dist.is_initialized()) or all(name in os.environ for name in LAUNCHER_ENV)


def fsdp_enabled(args: SALTConfig) -> bool:
    """FSDP from the arguments or from `accelerate launch`'s config (which sets ACCELERATE_USE_FSDP)."""
    return bool(args.fsdp) or parse_flag_from_env("ACCELERATE_USE_FSDP")


def check_launch(args: SALTConfig, *, distils: bool) -> None:
    """
    The checks that depend on the launch. `distils`: the run has a teacher (kd_weight > 0). Reading `args.world_size`
    sets up the process group where the launch asks for one, as `Trainer.__init__` would.
    """
    # one launched process may run FSDP (one GPU, e.g. with CPU offload); without a launcher the Trainer cannot
    if args.fsdp and not args.fsdp_config.get("xla", False) and not launched():
        raise ValueError(
            "fsdp shards the student across processes, but this run has one process and no launcher: launch it "
            f"({LAUNCH_HINT}), or drop --fsdp for a single-process run."
        )
    if args.deepspeed and not launched():
        raise ValueError(
            f"deepspeed={args.deepspeed!r} needs a launcher, which this process was not started by (DeepSpeed would "
            f"look for MPI instead): start it with {LAUNCH_HINT} (N may be 1)."
        )
    if not distils:
        return
    if args.teacher_placement == "zero3":
        if fsdp_enabled(args):
            raise ValueError(
                "teacher_placement='zero3' shards the teacher with DeepSpeed, which does not mix with an FSDP "
                "student: use teacher_placement='replicate' or DeepSpeed ZeRO-3 for the student."
            )
        if not launched():
            raise ValueError(
                "teacher_placement='zero3' shards the teacher across the processes of a launch, but this process "
                f"was not started by a launcher (DeepSpeed would look for MPI instead): use "
                f"teacher_placement='replicate' (a SALT teacher is the small model), or start the run with "
                f"{LAUNCH_HINT}."
            )
    if args.kd_data_selection and args.kd_select_cache_dir:
        check_writable_folder(args.kd_select_cache_dir, "kd_select_cache_dir")


def check_writable_folder(path: str | os.PathLike, field: str) -> None:
    """`path` is, or can be created as, a folder this process may write into; nothing is created here."""
    path = Path(path).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ValueError(
            f"{field}={str(path)!r}: {existing} is a file, so no folder can be made there: choose another folder."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (its nearest existing parent, {existing}, is read-only to this user)"
        raise ValueError(f"{field}={str(path)!r} cannot be written{where}: choose a folder you can write to.")


def exit_launched_process(code: int) -> NoReturn:
    """
    Ends a process of a multi-process launch with exit status `code`: waits for every process (a barrier), closes the
    process group, runs the atexit handlers and flushes the output while the interpreter is whole, then exits with
    `os._exit`, skipping the interpreter's teardown.

    Why the teardown is skipped (issue 23): torch (2.13) keeps a gloo process group alive after
    `destroy_process_group` once `torch._dynamo` / `torch._inductor` was first imported while the group existed (the
    Trainer's DDP set-up does), so its worker threads ("pt_gloo_runloop") outlive the group, and nothing public stops
    them. Such a thread frees a finished collective (a barrier keeps the collectives before it) after the caller has
    moved on; where that collective's tensors have Python objects, freeing them takes the GIL. Under CPU load that can
    fall into the interpreter's teardown, where CPython 3.11 ends a thread asking for the GIL with `pthread_exit`,
    whose unwinding through a C++ noexcept destructor calls `std::terminate`: "terminate called without an active
    exception", SIGABRT, and the launcher reports the run as failed after it finished. Without a teardown that moment
    does not exist. A core dump of the abort (thread in `~AsyncBarrierWork` -> `~AsyncAllgatherWork` ->
    `TensorImpl::decref_pyobject` -> `take_gil` -> `pthread_exit`, main thread in `Py_FinalizeEx`) is quoted in the
    issue's closing note.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    atexit._run_exitfuncs()  # what the teardown would run first (logging's flush among them)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
