"""
Preemption-safe checkpoints (issue 16): a `checkpoint-N` folder is complete or it does not exist, and SIGTERM saves.

transformers (5.x) writes a checkpoint in place, file after file, and then deletes old ones (`save_total_limit`): a
kill during a save leaves a `checkpoint-N` with truncated files, which `get_last_checkpoint` then picks, after the
older complete checkpoints may already be gone. Accelerate offers no atomic save either. Here every process writes
its files into `.tmp-checkpoint-N` beside the final folder; after a barrier the saving process fsyncs them, writes a
marker listing every file and its size (last), renames the folder to `checkpoint-N` and only then deletes old
checkpoints. The temporary name matches neither transformers' `checkpoint-*` glob (rotation) nor its
`^checkpoint-\\d+$` pattern (resume), and a DeepSpeed checkpoint (its shards and its `latest` tag) is written inside
the folder, so it is published whole as well.

Complete means: named `checkpoint-N` AND holding the marker, with every listed file at its listed size. A folder
without the marker (a plain Trainer's, or a half-written one from before this module) is never picked by
`last_complete_checkpoint` and never deleted by rotation; resume from it by its path if it is known to be good.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import threading
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.state import PartialState
from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy

logger = get_logger(__name__)

# Written last into a checkpoint, before the rename: {"global_step": N, "files": {relative path: size in bytes}}.
COMPLETE_MARKER = "salt_checkpoint.json"
STAGING_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# The exit status of salt-train after a SIGTERM stop (128 + SIGTERM, what a shell reports for a process it killed):
# the run is not finished, a scheduler may requeue it.
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


# ---- files --------------------------------------------------------------------------------------------------------


def fsync_path(path: str | os.PathLike) -> None:
    """Flushes a file's data, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary file in the same folder: a reader sees the old file or the new."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds the marker and every file the marker lists, at its listed size."""
    folder = Path(folder)
    try:
        files = json.loads((folder / COMPLETE_MARKER).read_text())["files"]
        return all((folder / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def checkpoint_folders(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every `checkpoint-N` folder in `output_dir`, oldest first; complete or not."""
    found = []
    if os.path.isdir(output_dir):
        for path in Path(output_dir).iterdir():
            match = _CHECKPOINT_RE.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    return sorted(found)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """
    The newest complete checkpoint in `output_dir` (see the module's docstring), or None. Every newer folder it
    passes over is named in the log and left as it is.
    """
    skipped = []
    for _, path in reversed(checkpoint_folders(output_dir)):
        if is_complete_checkpoint(path):
            if skipped:
                _log(f"Resuming from {path.name}, skipping incomplete checkpoint folders (left untouched): {skipped}")
            return str(path)
        skipped.append(path.name)
    if skipped:
        _log(f"No complete checkpoint; incomplete checkpoint folders (left untouched): {skipped}")
    return None


def _log(message: str, level: int = logging.WARNING) -> None:
    # the condition under which accelerate's logger refuses to log (accelerate/logging.py)
    if PartialState._shared_state:
        logger.log(level, message, main_process_only=True)
    else:  # called before any Trainer or Accelerator exists (a script looking for a checkpoint): one process
        logger.logger.log(level, message)


def publish_checkpoint(staging: Path, final: Path, step: int) -> None:
    """Marks the fully written `staging` folder complete and renames it to `final` (replacing an older `final`)."""
    for name in _file_sizes(staging):
        fsync_path(staging / name)
    marker = {"global_step": step, "files": _file_sizes(staging)}
    atomic_write_text(staging / COMPLETE_MARKER, json.dumps(marker, indent=1))
    fsync_path(staging)
    if final.exists():
        # a save of a step already saved (a resume from an older checkpoint): the old folder leaves first
        trash = final.with_name(TRASH_PREFIX + final.name)
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        shutil.rmtree(trash)
    os.rename(staging, final)
    fsync_path(final.parent)


def rotate_complete_checkpoints(output_dir: str | os.PathLike, limit: int | None, keep: str | None = None) -> None:
    """
    Deletes the oldest complete checkpoints beyond `limit` (`save_total_limit`), never `keep` (the best model's) nor
    the newest, and never an incomplete folder. A folder is renamed away before it is deleted, so a kill during the
    deletion leaves no half-deleted `checkpoint-N`; leftovers of such kills go here.
    """
    output_dir = Path(output_dir)
    for leftover in output_dir.glob(f"{TRASH_PREFIX}{PREFIX_CHECKPOINT_DIR}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    if limit is None or limit <= 0:
        return
    complete = [path for _, path in checkpoint_folders(output_dir) if is_complete_checkpoint(path)]
    keep_name = Path(keep).name if keep else None
    kept = set(p.name for p in complete[-limit:]) | {keep_name}
    for path in complete[:-1]:
        if path.name not in kept:
            _log(f"Deleting older checkpoint {path.name} (save_total_limit={limit})", level=logging.INFO)
            trash = path.with_name(TRASH_PREFIX + path.name)
            os.rename(path, trash)
            shutil.rmtree(trash)


# ---- the trainer's side ---------------------------------------------------------------------------------------------


class PreemptionSafeCheckpoints:
    """
    Mixin for a `transformers.Trainer` subclass (listed before `Trainer`): checkpoints written by every process into
    a temporary folder and renamed into place when complete (see the module's docstring), old ones deleted only
    after that, `resume_from_checkpoint=True` resolved to the newest complete checkpoint, and with
    `args.save_on_sigterm` a `SaveOnSigterm` callback.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sigterm_callback: SaveOnSigterm | None = None
        if self.args.save_on_sigterm:
            self.sigterm_callback = SaveOnSigterm(self)
            self.add_callback(self.sigterm_callback)

    @property
    def stopped_by_sigterm(self) -> bool:
        """Whether the last `train()` stopped early on SIGTERM (after saving a checkpoint)."""
        return self.sigterm_callback is not None and self.sigterm_callback.stopped_at is not None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint found in output directory ({self.args.output_dir})")
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            # also when training raises (on_train_end is then never called): no handler outlives its run
            if self.sigterm_callback is not None:
                self.sigterm_callback.restore()

    def _save_checkpoint(self, model, trial) -> None:
        step = self.state.global_step
        run_dir = Path(self._get_output_dir(trial=trial))
        final = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        staging = run_dir / f"{STAGING_PREFIX}{final.name}"
        if self.args.should_save:
            # the leftover of a run killed while saving this step: nobody writes into it any more
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self._write_checkpoint_files(model, trial, str(staging), final)
        self.accelerator.wait_for_everyone()  # every process's files (its RNG state, its shards) are written
        if self.args.should_save:
            publish_checkpoint(staging, final, step)
            logger.info(f"Saved complete checkpoint {final}", main_process_only=True)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            rotate_complete_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
        if self.args.push_to_hub:
            self._push_from_checkpoint(str(final))

    def _write_checkpoint_files(self, model, trial, staging: str, final: Path) -> None:
        """What `Trainer._save_checkpoint` writes (model, optimizer, scheduler, scaler, RNG, state), into `staging`;
        paths recorded in the state name the final folder."""
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        self.save_model(staging, _internal_call=True)
        best_step = self.state.best_global_step
        if self.args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST) and best_step:
            best = final.with_name(f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
            if best_step == self.state.global_step or best.exists():
                self.state.best_model_checkpoint = str(best)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(staging)
            self._save_scaler(staging)
            self._save_rng_state(staging)
        if self.args.should_save:
            for cb in self.callback_handler.callbacks + [self.control]:
                if isinstance(cb, ExportableState):
                    name, cb_state = cb.__class__.__name__, cb.state()
                    if isinstance(self.state.stateful_callbacks[name], list):
                        self.state.stateful_callbacks[name].append(cb_state)
                    else:
                        self.state.stateful_callbacks[name] = cb_state
            self.state.save_to_json(os.path.join(staging, TRAINER_STATE_NAME))


class SaveOnSigterm(TrainerCallback):
    """
    On SIGTERM (a preemption notice), finishes the current optimizer step, saves a checkpoint and stops training. The
    handler only records the signal; at every step end the processes reduce that flag, so all of them stop after
    the same step even when only one was signalled. A second SIGTERM gets the previous handler's behaviour (for the
    default handler: exit now). The previous handler is back when training ends.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.stopped_at: int | None = None
        self._requested = False
        self._previous = None
        self._installed = False
        self._owner: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.stopped_at, self._requested = None, False
        # Python accepts signal handlers in the main thread only (a Trainer run from another thread keeps the default)
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
            self._installed = True
            self._owner = os.getpid()

    def _on_signal(self, signum, frame):
        if self._requested or os.getpid() != self._owner:
            # a second SIGTERM, or a process forked from the run (a pool worker told to stop): the usual behaviour
            self.restore()
            signal.raise_signal(signum)
            return
        self._requested = True

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor([float(self._requested)], device=self.trainer.accelerator.device)
        if self.trainer.accelerator.reduce(flag, reduction="sum").item() > 0:
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
            logger.warning(
                f"SIGTERM received: saving {PREFIX_CHECKPOINT_DIR}-{state.global_step} after step "
                f"{state.global_step} and stopping; resume with --resume_from_checkpoint last.",
                main_process_only=True,
            )

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False
