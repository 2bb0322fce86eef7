"""`accelerate launch train.py` / `salt-train`: SALT pretraining or fine-tuning from the command line or a YAML file.

    salt-train --config configs/pretrain.yaml --max_steps 2000     # values of the file are defaults; flags win
    accelerate launch train.py --model_name_or_path ckpt --teacher_model_name_or_path small --data_files a.jsonl

Every check of the input runs before anything is written or trained (README.md, "Bad input").
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import numpy as np
import torch.distributed as dist
import yaml
from accelerate.logging import get_logger
from transformers import AutoTokenizer, default_data_collator, set_seed

from ..checkpointing import SIGTERM_EXIT_CODE, atomic_write_text
from ..config import SALTConfig
from ..launch import exit_launched_process
from ..metrics import NextTokenMetrics, preprocess_logits_for_metrics
from ..model_card import write_model_card
from ..models import build_student, max_positions
from ..teacher import output_vocab_size
from ..trainer import SALTTrainer
from .args import (
    ARG_CLASSES,
    DataArguments,
    InputError,
    ModelArguments,
    RunArguments,
    as_input_error,
    check_output_dir,
    parse_args,
)
from .preflight import check_arguments, check_launch_context, check_sources, check_teacher_targets, resolve_resume

__all__ = ["ARG_CLASSES", "RUN_CONFIG_NAME", "corpus_texts", "main", "parse_args", "run"]

logger = get_logger(__name__)

RUN_CONFIG_NAME = "salt_run_config.yaml"
# salt-train's defaults that differ from the library's: a command-line run that is preempted (SIGTERM) saves first.
CLI_DEFAULTS = {"save_on_sigterm": True}


# ---- the run --------------------------------------------------------------------------------------------------------


def corpus_texts(dataset, text_column: str, max_chars: int = 20_000_000):
    """Up to `max_chars` characters of training text, for the tokenizer (a few seconds of BPE training)."""
    total = 0
    for row in dataset:
        text = row[text_column]
        total += len(text)
        yield text
        if total >= max_chars:
            return


def load_corpus(data_args: DataArguments, seed: int):
    """The raw train and validation splits (the loaders raise on missing files, empty files, a missing column)."""
    from ..data import builtin_corpus, load_text_dataset

    with as_input_error(ValueError, OSError):
        if data_args.dataset_name is None and not data_args.data_files:
            return builtin_corpus(
                validation_fraction=data_args.validation_fraction, max_bytes=data_args.max_corpus_bytes
            )
        return load_text_dataset(
            dataset_name=data_args.dataset_name,
            dataset_config=data_args.dataset_config,
            data_files=data_args.data_files,
            text_column=data_args.text_column,
            train_split=data_args.train_split,
            validation_split=data_args.validation_split,
            validation_fraction=data_args.validation_fraction,
            streaming=data_args.streaming,
            seed=seed,
        )


def load_tokenizer(model_args: ModelArguments, train_texts):
    source = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if source:
        flag = "--tokenizer_name_or_path" if model_args.tokenizer_name_or_path else "--model_name_or_path"
        with as_input_error(ValueError, OSError, prefix=f"{flag} {source}: "):
            return AutoTokenizer.from_pretrained(source, trust_remote_code=model_args.trust_remote_code)
    from ..data import train_bpe_tokenizer

    logger.info(f"Training a {model_args.tokenizer_vocab_size}-token byte-level BPE", main_process_only=True)
    with as_input_error(ValueError):
        return train_bpe_tokenizer(train_texts, vocab_size=model_args.tokenizer_vocab_size)


def load_student(model_args: ModelArguments, data_args: DataArguments, tokenizer):
    """The student, refused when the sequences are beyond its positions or the tokenizer beyond its embedding."""
    lora = None
    if model_args.use_lora:
        lora = dict(
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=model_args.lora_target_modules,
        )
    with as_input_error(ValueError, OSError):
        student = build_student(
            tokenizer,
            name_or_path=model_args.model_name_or_path,
            model_config=model_args.model_config,
            seq_length=data_args.seq_length,
            trust_remote_code=model_args.trust_remote_code,
            lora=lora,
        )
    limit = max_positions(student.config)
    if limit is not None and data_args.seq_length > limit:
        raise InputError(
            f"--seq_length {data_args.seq_length} is beyond the student's {limit} positions: lower --seq_length."
        )
    if len(tokenizer) > output_vocab_size(student):
        raise InputError(
            f"The tokenizer has {len(tokenizer)} tokens but the student's embedding only {output_vocab_size(student)} "
            "rows: use the student's own tokenizer."
        )
    return student


def load_packed_data(model_args: ModelArguments, data_args: DataArguments, seed: int, tokenizer=None):
    """
    The tokenizer (given, the student's, or a BPE trained on the corpus) and the packed splits, as salt-train and
    salt-teacher-targets both build them: the same arguments give the same rows. Packing is cached by fingerprint: a
    second run with the same corpus and tokenizer skips it.
    """
    from ..data import tokenize_and_pack

    raw = load_corpus(data_args, seed)
    if tokenizer is None:
        tokenizer = load_tokenizer(model_args, corpus_texts(raw["train"], data_args.text_column))
    with as_input_error(ValueError):
        packed = tokenize_and_pack(
            raw,
            tokenizer,
            seq_length=data_args.seq_length,
            text_column=data_args.text_column,
            num_proc=data_args.num_proc,
        )
    return tokenizer, packed


def save_run_config(output_dir: str, model_args, data_args, training_args) -> None:
    values = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **training_args.to_dict()}
    os.makedirs(output_dir, exist_ok=True)
    text = yaml.safe_dump(json.loads(json.dumps(values, default=str)), sort_keys=True)
    atomic_write_text(os.path.join(output_dir, RUN_CONFIG_NAME), text)


def run(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: SALTConfig,
    run_args: RunArguments,
    tokenizer=None,
) -> dict[str, Any]:
    """Checks the input, trains, saves; returns the final metrics, the log history and the trainer."""
    # 1) checks that need nothing loaded: the arguments, the resume point, every model source (no weights read)
    check_output_dir(training_args, run_args)
    resume = resolve_resume(training_args)
    check_arguments(model_args, data_args, training_args)
    check_teacher_targets(training_args)
    check_sources(model_args, data_args, training_args)
    check_launch_context(training_args)
    set_seed(training_args.seed)

    # 2) data, tokenizer, models and their compatibility; 3) tokenise and pack
    tokenizer, packed = load_packed_data(model_args, data_args, training_args.seed, tokenizer)
    student = load_student(model_args, data_args, tokenizer)
    eval_dataset = packed["validation"]
    if data_args.max_eval_rows is not None and not data_args.streaming:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_rows, len(eval_dataset))))

    # the trainer checks the launch (salt_hf.launch) and the teacher against the student (same tokenizer, vocabulary
    # sizes) before it creates the output folder
    with as_input_error(ValueError):
        trainer = SALTTrainer(
            model=student,
            args=training_args,
            train_dataset=packed["train"],
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            data_collator=default_data_collator,
            compute_metrics=NextTokenMetrics(),
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )

    # 4) train, save the student (safetensors) with its tokenizer, model card and the resolved configuration
    train_result = trainer.train(resume_from_checkpoint=resume)
    if trainer.stopped_by_sigterm:
        # not finished: the checkpoint is the run's state, the output folder gets no final model
        return {"metrics": dict(train_result.metrics), "log_history": trainer.state.log_history, "trainer": trainer}
    trainer.save_model(training_args.output_dir)
    metrics = dict(train_result.metrics)
    if training_args.eval_strategy != "no" or training_args.do_eval:
        metrics.update(trainer.evaluate())
    write_model_card(trainer)
    save_run_config(training_args.output_dir, model_args, data_args, training_args)
    trainer.save_metrics("all", metrics)
    trainer.save_state()
    return {"metrics": metrics, "log_history": trainer.state.log_history, "trainer": trainer}


def main(argv: list[str] | None = None) -> int:
    try:
        model_args, data_args, training_args, run_args = parse_args(argv, defaults=CLI_DEFAULTS)
        result = run(model_args, data_args, training_args, run_args)
    except InputError as err:
        # Clear message, exit code 2; the checks run before anything is written. Any other error is a bug: it keeps
        # its traceback.
        print(f"salt-train: error: {err}", file=sys.stderr)
        return 2
    trainer = result.pop("trainer")
    code = 0
    if trainer.stopped_by_sigterm:
        step = trainer.state.global_step
        logger.warning(
            f"salt-train: stopped by SIGTERM after step {step}, checkpoint-{step} saved; run the same command with "
            "--resume_from_checkpoint last to continue.",
            main_process_only=True,
        )
        code = SIGTERM_EXIT_CODE
    del trainer, result
    if dist.is_available() and dist.is_initialized():  # a multi-process launch: every process leaves together
        exit_launched_process(code)
    return code


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
