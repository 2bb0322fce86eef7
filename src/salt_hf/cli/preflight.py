"""salt-train's checks before anything is loaded or written: the arguments, the resume point, every model source and
the launch. The data, the tokenizer and the models load only after these pass; teacher against student (vocabulary
sizes, and the tokenizers where the student's is trained here) is checked when the trainer is built, still before the
output folder is created.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoTokenizer

from ..checkpointing import last_complete_checkpoint
from ..config import SALTConfig
from ..launch import check_launch
from ..models import check_model_config_spec, max_positions
from ..sources import check_checkpoint, check_model_source, local_folder
from ..speedups import check_seq_warmup
from ..teacher import Teacher, check_tokenizers_match, load_teacher_config, load_teacher_tokenizer
from .args import DataArguments, InputError, ModelArguments, as_input_error
from .args import check_model_source as check_source_exists


def resolve_resume(training_args: SALTConfig) -> str | None:
    """The checkpoint to resume from (None: a new run), checked whole (`salt_hf.sources.check_checkpoint`)."""
    resume = training_args.resume_from_checkpoint
    if resume in (None, "", "false", "False"):
        return None
    if resume in ("last", "true", "True"):
        # the newest complete checkpoint: a folder left half-written by a kill is named in the log and skipped
        last = last_complete_checkpoint(training_args.output_dir)
        if last is None:
            raise InputError(
                f"--resume_from_checkpoint {resume}: no complete checkpoint-* folder in {training_args.output_dir}."
            )
        return last
    if not os.path.isdir(resume):
        raise InputError(f"--resume_from_checkpoint {resume}: no such checkpoint folder.")
    with as_input_error(ValueError, prefix=f"--resume_from_checkpoint {resume}: "):
        check_checkpoint(Path(resume))
    return resume


def distils(training_args: SALTConfig) -> bool:
    """Whether the run has a teacher to load (a path and kd_weight > 0)."""
    return bool(training_args.teacher_model_name_or_path) and training_args.kd_weight > 0


def check_arguments(model_args: ModelArguments, data_args: DataArguments, training_args: SALTConfig) -> None:
    """The checks that need nothing loaded."""
    if data_args.seq_length < 2:
        raise InputError(f"--seq_length {data_args.seq_length}: need at least 2 tokens per row.")
    if not 0.0 < data_args.validation_fraction < 1.0:
        raise InputError(f"--validation_fraction {data_args.validation_fraction} must be in (0, 1).")
    if training_args.kd_data_selection and distils(training_args) and data_args.streaming:
        raise InputError("--kd_data_selection scores every training sequence first: it needs --streaming false.")
    if training_args.seq_warmup_steps > 0:
        with as_input_error(ValueError):
            check_seq_warmup(
                data_args.seq_length,
                schedule=training_args.seq_warmup_schedule,
                start_length=training_args.seq_warmup_start_length,
            )
    if not model_args.model_name_or_path:
        with as_input_error(ValueError):
            check_model_config_spec(model_args.model_config)
    check_source_exists("--model_name_or_path", model_args.model_name_or_path)
    check_source_exists("--tokenizer_name_or_path", model_args.tokenizer_name_or_path)
    if distils(training_args):
        check_source_exists("--teacher_model_name_or_path", training_args.teacher_model_name_or_path)


def check_teacher_targets(training_args: SALTConfig) -> None:
    """A run reading stored teacher targets: the store is complete (its manifest written), refused before any data
    or model loads. The trainer then checks every shard's size and SHA-256 and compares the store's data, tokenizer
    and teacher with the run's, still before the output folder is created; hashing once, there, not here too."""
    if training_args.teacher_targets is None or training_args.kd_weight == 0:
        return
    from ..targets import TargetStore

    with as_input_error(ValueError):
        TargetStore(training_args.teacher_targets, verify=False)


def check_sources(model_args: ModelArguments, data_args: DataArguments, training_args: SALTConfig) -> None:
    """
    Every model the run will load, read without its weights: the student given by path and the teacher (loaded only
    when the KD stage starts) are causal LMs with complete weights, the teacher covers the sequence length, and the
    teacher's tokenizer is the student's whenever both lie in folders.
    """
    if model_args.model_name_or_path:
        flag = f"--model_name_or_path {model_args.model_name_or_path}: "
        with as_input_error(ValueError, prefix=flag):
            check_model_source(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    if not distils(training_args):
        return
    teacher = training_args.teacher_model_name_or_path
    kwargs = training_args.teacher_model_init_kwargs or {}
    flag = f"--teacher_model_name_or_path {teacher}: "
    with as_input_error(ValueError, prefix=flag):
        Teacher(teacher, init_kwargs=kwargs).check_source()
    with as_input_error(ValueError, OSError, prefix=flag):
        teacher_config = load_teacher_config(teacher, kwargs)
    limit = max_positions(teacher_config)
    if limit is not None and data_args.seq_length > limit:
        raise InputError(
            f"--seq_length {data_args.seq_length} is beyond the teacher's {limit} positions: lower --seq_length."
        )
    check_tokenizer_folders(model_args, training_args)


def check_launch_context(training_args: SALTConfig) -> None:
    """
    The launch's checks (`salt_hf.launch`), which the trainer repeats: here before the student is built, since under a
    DeepSpeed ZeRO-3 config building it already joins the launch (`deepspeed.zero.Init`).
    """
    with as_input_error(ValueError):
        check_launch(training_args, distils=distils(training_args))


def check_tokenizer_folders(model_args: ModelArguments, training_args: SALTConfig) -> None:
    """The teacher's tokenizer against the student's, when both are read from folders (else the trainer compares)."""
    student_source = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    teacher = training_args.teacher_model_name_or_path
    if not student_source or local_folder(student_source) is None or local_folder(teacher) is None:
        return
    teacher_tokenizer = load_teacher_tokenizer(teacher, training_args.teacher_model_init_kwargs)
    if teacher_tokenizer is None:
        return
    flag = "--tokenizer_name_or_path" if model_args.tokenizer_name_or_path else "--model_name_or_path"
    with as_input_error(ValueError, OSError, prefix=f"{flag} {student_source}: "):
        student_tokenizer = AutoTokenizer.from_pretrained(
            student_source, trust_remote_code=model_args.trust_remote_code
        )
    with as_input_error(ValueError, prefix=f"--teacher_model_name_or_path {teacher}: "):
        check_tokenizers_match(student_tokenizer, teacher_tokenizer)
