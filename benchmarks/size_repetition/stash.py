"""Runs longer than a session: the newest complete checkpoint of each unfinished run, committed, so that a fresh
checkout resumes it rather than starting it again.

A session's work folder (benchmarks/work/) is not kept: a new checkout has none of the checkpoints a stopped session
left, and a 2M run (19,089 steps, about 2.5 idle core-hours) can outlast the session that started it. `stash` copies
each unfinished run's newest complete checkpoint (salt_hf.checkpointing's marker: every file at its listed size)
into results/resume/<run>/checkpoint-N, its files cut into parts under the repository's 4 MB (`<file>.partNN`), and
drops the stash of a run that has finished; `unstash` joins the parts back, byte for byte, into the run's work folder
when that has no complete checkpoint of its own, so `last_complete_checkpoint` finds it as the run left it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from salt_hf.checkpointing import last_complete_checkpoint

PART_BYTES = 3 * 2**20  # under the repository's 4 MB per file
SUFFIX = ".part"


def stash(run_dir: Path, into: Path, part_bytes: int = PART_BYTES) -> Path | None:
    """`run_dir`'s newest complete checkpoint, in parts, as `into`/checkpoint-N (replacing an older stash in `into`);
    None, with `into` left as it is, where the run has no complete checkpoint."""
    newest = last_complete_checkpoint(run_dir)
    if newest is None:
        return None
    source = Path(newest)
    target = into / source.name
    if target.is_dir():
        return target  # stashed already
    staging = into / f".tmp-{source.name}"
    shutil.rmtree(staging, ignore_errors=True)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        write_parts(path.read_bytes(), staging / path.relative_to(source), part_bytes)
    for old in into.glob("checkpoint-*"):
        shutil.rmtree(old)
    staging.rename(target)
    return target


def write_parts(data: bytes, path: Path, part_bytes: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for k, start in enumerate(range(0, max(len(data), 1), part_bytes)):
        (path.parent / f"{path.name}{SUFFIX}{k:02d}").write_bytes(data[start : start + part_bytes])


def unstash(stashed: Path, run_dir: Path) -> str | None:
    """The stash in `stashed` joined back into `run_dir` where `run_dir` has no complete checkpoint of its own;
    returns the checkpoint the run resumes from (None where there is neither)."""
    own = last_complete_checkpoint(run_dir) if run_dir.is_dir() else None
    found = sorted(stashed.glob("checkpoint-*")) if stashed.is_dir() else []
    if own is not None or not found:
        return own
    source = found[-1]
    staging = run_dir / f".tmp-{source.name}"
    shutil.rmtree(staging, ignore_errors=True)
    for first in sorted(source.rglob(f"*{SUFFIX}00")):
        parts = sorted(first.parent.glob(first.name.removesuffix("00") + "[0-9][0-9]"))
        out = staging / first.relative_to(source).parent / first.name.removesuffix(f"{SUFFIX}00")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"".join(p.read_bytes() for p in parts))
    staging.rename(run_dir / source.name)
    return last_complete_checkpoint(run_dir)
