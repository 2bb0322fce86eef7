"""`salt-teacher-targets`: the teacher run once over the packed training rows, its targets written as a store.

    salt-teacher-targets --config configs/pretrain.yaml --teacher_targets targets/   # the run's own YAML
    accelerate launch -m salt_hf.cli.teacher_targets --config run.yaml --teacher_targets targets/ --targets_k 16
    salt-train --config configs/pretrain.yaml --teacher_targets targets/              # reads it: no teacher forward

It takes salt-train's arguments (data, tokenizer, packing, teacher, `kd_temperature`) so that the rows it covers are
the very rows the training run packs; the store goes to `--teacher_targets`, where salt-train then reads it. Every
process of the launch takes a share of the shards; a killed run continues where it stopped when run again.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from accelerate import PartialState
from accelerate.logging import get_logger

from ..config import SALTConfig
from ..targets import Manifest, StoreError, store_targets
from ..teacher import Teacher, check_tokenizers_match, load_teacher_tokenizer, output_vocab_size
from .args import DataArguments, InputError, ModelArguments, RunArguments, as_input_error, parse_args
from .preflight import check_arguments, check_sources
from .train import load_packed_data

logger = get_logger(__name__)


@dataclass
class TargetArguments:
    targets_form: Literal["sampled", "topk"] = field(
        default="sampled",
        metadata={
            "help": "'sampled': K ids drawn from the teacher's tempered distribution with their counts (unbiased "
            "forward KL); 'topk': its K most likely ids with their log-probabilities (biased, renormalised)."
        },
    )
    targets_k: int = field(default=16, metadata={"help": "Draws per token ('sampled', <= 255) or ids kept ('topk')."})
    targets_seed: int = field(
        default=0, metadata={"help": "Seed of the draws (each row's own from it and its index)."}
    )
    targets_batch_size: int = field(default=8, metadata={"help": "Rows per teacher forward on each process."})
    targets_rows_per_shard: int = field(default=1024, metadata={"help": "Rows per shard file (the unit of resuming)."})


ARG_CLASSES = (ModelArguments, DataArguments, SALTConfig, RunArguments, TargetArguments)


def check_target_arguments(data_args: DataArguments, training_args: SALTConfig, targets: TargetArguments) -> None:
    if training_args.teacher_targets is None:
        raise InputError("--teacher_targets: give the folder to write the store into.")
    if not training_args.teacher_model_name_or_path:
        raise InputError("--teacher_model_name_or_path: give the teacher whose targets to store.")
    if data_args.streaming:
        raise InputError("--streaming: the store is keyed by packed-row index, which a stream has not; turn it off.")
    if targets.targets_k < 1 or (targets.targets_form == "sampled" and targets.targets_k > 255):
        raise InputError(f"--targets_k {targets.targets_k}: give 1..255 draws ('sampled') or >= 1 ids ('topk').")
    if targets.targets_batch_size < 1 or targets.targets_rows_per_shard < 1:
        raise InputError("--targets_batch_size and --targets_rows_per_shard must be >= 1.")


def load_teacher_for_targets(training_args: SALTConfig, tokenizer):
    """
    The teacher's fingerprint (of its folder's files, as salt-train reads it, before loading), the teacher checked
    against the tokenizer and loaded on this process's device.
    """
    path = training_args.teacher_model_name_or_path
    teacher = Teacher(path, init_kwargs=training_args.teacher_model_init_kwargs)
    fingerprint = teacher.fingerprint()
    with as_input_error(ValueError, prefix=f"--teacher_model_name_or_path {path}: "):
        check_tokenizers_match(tokenizer, load_teacher_tokenizer(path, training_args.teacher_model_init_kwargs))
        module = teacher.load()
        vocab = len(tokenizer)
        if vocab > output_vocab_size(module):
            raise ValueError(f"its output layer has {output_vocab_size(module)} rows, the tokenizer {vocab} tokens.")
    module.to(PartialState().device).eval().requires_grad_(False)
    return fingerprint, module


def run(model_args, data_args, training_args: SALTConfig, targets: TargetArguments) -> Manifest:
    check_target_arguments(data_args, training_args, targets)
    check_arguments(model_args, data_args, training_args)
    check_sources(model_args, data_args, training_args)
    tokenizer, packed = load_packed_data(model_args, data_args, training_args.seed)
    train = packed["train"]
    fingerprint, module = load_teacher_for_targets(training_args, tokenizer)
    start = time.perf_counter()
    with as_input_error(StoreError):  # a folder holding another store or other files: refused before any write
        written = store_targets(
            module,
            train,
            training_args.teacher_targets,
            form=targets.targets_form,
            k=targets.targets_k,
            temperature=training_args.kd_temperature,
            seed=targets.targets_seed,
            tokenizer=tokenizer,
            rows_per_shard=targets.targets_rows_per_shard,
            batch_size=targets.targets_batch_size,
            teacher_fingerprint=fingerprint,
        )
    seconds = time.perf_counter() - start
    tokens = written.rows * written.seq_length
    size = sum(s["bytes"] for s in written.shards)
    logger.info(
        f"teacher targets: {written.rows} rows ({tokens:,} tokens), form {written.form}, K {written.k}: "
        f"{size / tokens:.1f} bytes per token, {seconds:.0f} s ({tokens / max(seconds, 1e-9):,.0f} tokens/s) "
        f"-> {training_args.teacher_targets}",
        main_process_only=True,
    )
    return written


def main(argv: list[str] | None = None) -> int:
    try:
        model_args, data_args, training_args, _, targets = parse_args(argv, classes=ARG_CLASSES)
        run(model_args, data_args, training_args, targets)
    except InputError as err:
        print(f"salt-teacher-targets: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
