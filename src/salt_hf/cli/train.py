"""`accelerate launch train.py` / `salt-train`: SALT pretraining or fine-tuning from the command line or a YAML file.

    salt-train --config configs/pretrain.yaml --max_steps 2000     # values of the file are defaults; flags win
    accelerate launch train.py --model_name_or_path ckpt --teacher_model_name_or_path small --data_files a.jsonl

Every check of the input runs before anything is written or trained (../README.md, "Bad input").
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from accelerate.logging import get_logger
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    HfArgumentParser,
    LlamaConfig,
    PreTrainedModel,
    default_data_collator,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

from ..config import SALTConfig
from ..speedups import check_seq_warmup
from ..teacher import load_teacher_config, output_vocab_size
from ..trainer import SALTTrainer

logger = get_logger(__name__)

# Named Llama sizes for pretraining from scratch (parameters counted at vocabulary 8k, embeddings tied).
MODEL_SIZES: dict[str, dict[str, int]] = {
    "1m": dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
    "2m": dict(hidden_size=128, intermediate_size=352, num_hidden_layers=3, num_attention_heads=2),
    "3m": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=3, num_attention_heads=3),
    "5m": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4),
    "20m": dict(hidden_size=448, intermediate_size=1216, num_hidden_layers=8, num_attention_heads=7),
}
RUN_CONFIG_NAME = "salt_run_config.yaml"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Student checkpoint (local folder or hub id) to continue training; unset: a new student."},
    )
    model_config: str = field(
        default="5m",
        metadata={
            "help": f"For a new student: a named Llama size ({', '.join(MODEL_SIZES)}) or a JSON file of "
            "LlamaConfig / GPT2Config fields (add 'model_type': 'gpt2' for GPT-2)."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer folder or hub id; default: the student's, else one trained on the corpus."},
    )
    tokenizer_vocab_size: int = field(
        default=8192, metadata={"help": "Vocabulary of the byte-level BPE trained when no tokenizer is given."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the checkpoint (off by default)."}
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (PEFT) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules to adapt; default: all linear layers but the output head."}
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset name; unset with no data_files: the built-in corpus."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    data_files: list[str] | None = field(
        default=None, metadata={"help": "Local files (txt, json, jsonl, csv, parquet), all of one type."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    validation_split: str | None = field(
        default=None, metadata={"help": "Validation split; unset: hold out validation_fraction of the train split."}
    )
    validation_fraction: float = field(default=0.05, metadata={"help": "Held-out fraction when no split is named."})
    seq_length: int = field(default=256, metadata={"help": "Tokens per packed training row."})
    streaming: bool = field(default=False, metadata={"help": "Stream the corpus (larger than memory)."})
    num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})
    max_corpus_bytes: int | None = field(
        default=None, metadata={"help": "Use only this many bytes of the built-in corpus (quick runs)."}
    )
    max_eval_rows: int | None = field(default=None, metadata={"help": "Evaluate on at most this many packed rows."})


@dataclass
class RunArguments:
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output folder that already holds a run."}
    )


ARG_CLASSES = (ModelArguments, DataArguments, SALTConfig, RunArguments)


class InputError(ValueError):
    """Bad input found before training; the message names the problem and the fix."""


# ---- argument parsing -----------------------------------------------------------------------------------------------


def _field_names(classes) -> set[str]:
    return {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}


def read_yaml_config(path: str, classes=ARG_CLASSES) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise InputError(f"--config {path}: no such file.")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise InputError(f"--config {path}: expected a mapping of argument names to values, got {type(values)}.")
    known = _field_names(classes)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise InputError(f"Unknown key {key!r} in {path}.{hint} `salt-train --help` lists every argument.")
    return values


def parse_args(argv: list[str] | None = None, classes=ARG_CLASSES):
    """One instance of each of `classes` from the flags, over defaults read from `--config file.yaml`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(classes)
    parser.add_argument("--config", default=None, help="YAML file of argument defaults; flags override them.")
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        config_path = argv[i + 1] if i + 1 < len(argv) else None
        if config_path is None:
            raise InputError("--config needs a YAML file path.")
        del argv[i : i + 2]
    if config_path:
        parser.set_defaults(**read_yaml_config(config_path, classes))
    *instances, _ = parser.parse_args_into_dataclasses(args=argv)
    return tuple(instances)


# ---- checks that run before anything is written ---------------------------------------------------------------------


def check_output_dir(training_args: SALTConfig, run_args: RunArguments) -> None:
    out = Path(training_args.output_dir)
    if not out.exists() or not any(out.iterdir()):
        return
    if training_args.resume_from_checkpoint or run_args.overwrite_output_dir:
        return
    raise InputError(
        f"Output folder {out} already holds files (a previous run?). Nothing was changed. Pass "
        "--resume_from_checkpoint <checkpoint or 'last'> to continue it, --overwrite_output_dir to write into it "
        "anyway, or choose a new --output_dir."
    )


def resolve_resume(training_args: SALTConfig) -> str | None:
    resume = training_args.resume_from_checkpoint
    if resume in (None, "", "false", "False"):
        return None
    if resume in ("last", "true", "True"):
        last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
        if last is None:
            raise InputError(
                f"--resume_from_checkpoint {resume}: no checkpoint-* folder in {training_args.output_dir}."
            )
        return last
    if not os.path.isdir(resume):
        raise InputError(f"--resume_from_checkpoint {resume}: no such checkpoint folder.")
    return resume


def new_model_config(spec: str, vocab_size: int, seq_length: int, tokenizer):
    if spec in MODEL_SIZES:
        fields = dict(MODEL_SIZES[spec], num_key_value_heads=MODEL_SIZES[spec]["num_attention_heads"])
        fields["tie_word_embeddings"] = True
        model_type = "llama"
    elif os.path.isfile(spec):
        with open(spec) as f:
            fields = json.load(f)
        model_type = fields.pop("model_type", "llama")
    else:
        raise InputError(
            f"--model_config {spec!r} is neither a named size ({', '.join(MODEL_SIZES)}) nor a JSON file of config "
            "fields."
        )
    fields.setdefault("vocab_size", vocab_size)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if model_type == "llama":
        fields.setdefault("max_position_embeddings", seq_length)
        return LlamaConfig(**special, pad_token_id=tokenizer.pad_token_id, **fields)
    fields.setdefault("n_positions", seq_length)
    return AutoConfig.for_model(model_type, **special, **fields)


def max_positions(config) -> int | None:
    text = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if getattr(text, name, None):
            return int(getattr(text, name))
    return None


# ---- the run --------------------------------------------------------------------------------------------------------


def load_tokenizer(model_args: ModelArguments, train_texts):
    source = model_args.tokenizer_name_or_path or model_args.model_name_or_path
    if source:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=model_args.trust_remote_code)
    from ..data import train_bpe_tokenizer

    logger.info(f"Training a {model_args.tokenizer_vocab_size}-token byte-level BPE", main_process_only=True)
    return train_bpe_tokenizer(train_texts, vocab_size=model_args.tokenizer_vocab_size)


def _corpus_texts(dataset, text_column: str, max_chars: int = 20_000_000):
    """Up to `max_chars` characters of training text, for the tokenizer (a few seconds of BPE training)."""
    total = 0
    for row in dataset:
        text = row[text_column]
        total += len(text)
        yield text
        if total >= max_chars:
            return


def build_student(model_args: ModelArguments, data_args: DataArguments, tokenizer) -> PreTrainedModel:
    if model_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path, use_safetensors=True, trust_remote_code=model_args.trust_remote_code
        )
    else:
        config = new_model_config(model_args.model_config, len(tokenizer), data_args.seq_length, tokenizer)
        model = AutoModelForCausalLM.from_config(config)
    if model_args.use_lora:
        from peft import LoraConfig, get_peft_model

        targets = model_args.lora_target_modules or "all-linear"
        lora = LoraConfig(
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model


def preprocess_logits_for_metrics(logits, labels):
    # Keep only the argmax: holding full-vocabulary eval logits would cost batch x length x vocab per batch.
    return logits.argmax(dim=-1)


def next_token_accuracy(eval_pred) -> dict[str, float]:
    preds, labels = eval_pred.predictions, eval_pred.label_ids
    preds, labels = preds[:, :-1], labels[:, 1:]
    mask = labels != -100
    return {"accuracy": float((preds[mask] == labels[mask]).mean()) if mask.any() else math.nan}


def save_run_config(output_dir: str, model_args, data_args, training_args) -> None:
    values = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **training_args.to_dict()}
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, RUN_CONFIG_NAME), "w") as f:
        yaml.safe_dump(json.loads(json.dumps(values, default=str)), f, sort_keys=True)


def run(model_args: ModelArguments, data_args: DataArguments, training_args: SALTConfig, run_args: RunArguments,
        tokenizer=None) -> dict[str, Any]:  # fmt: skip
    """Checks the input, trains, saves; returns the final metrics and the log history."""
    # imported here so that the model sizes above are importable where the datasets library is not installed
    from ..data import builtin_corpus, load_text_dataset, tokenize_and_pack

    # 1) checks that need nothing loaded
    check_output_dir(training_args, run_args)
    resume = resolve_resume(training_args)
    if data_args.seq_length < 2:
        raise InputError(f"--seq_length {data_args.seq_length}: need at least 2 tokens per row.")
    if not 0.0 < data_args.validation_fraction < 1.0:
        raise InputError(f"--validation_fraction {data_args.validation_fraction} must be in (0, 1).")
    if training_args.seq_warmup_steps > 0:
        check_seq_warmup(
            data_args.seq_length,
            schedule=training_args.seq_warmup_schedule,
            start_length=training_args.seq_warmup_start_length,
        )
    set_seed(training_args.seed)

    # 2) data and tokenizer (the loaders raise on missing files, empty files, a missing text column)
    if data_args.dataset_name is None and not data_args.data_files:
        raw = builtin_corpus(validation_fraction=data_args.validation_fraction, max_bytes=data_args.max_corpus_bytes)
    else:
        raw = load_text_dataset(
            dataset_name=data_args.dataset_name,
            dataset_config=data_args.dataset_config,
            data_files=data_args.data_files,
            text_column=data_args.text_column,
            train_split=data_args.train_split,
            validation_split=data_args.validation_split,
            validation_fraction=data_args.validation_fraction,
            streaming=data_args.streaming,
            seed=training_args.seed,
        )
    if tokenizer is None:
        tokenizer = load_tokenizer(model_args, _corpus_texts(raw["train"], data_args.text_column))

    # 3) models and their compatibility
    student = build_student(model_args, data_args, tokenizer)
    limit = max_positions(student.config)
    if limit is not None and data_args.seq_length > limit:
        raise InputError(
            f"--seq_length {data_args.seq_length} is beyond the student's {limit} positions: lower --seq_length."
        )
    teacher_path = training_args.teacher_model_name_or_path
    if teacher_path and training_args.kd_weight > 0:
        teacher_config = load_teacher_config(teacher_path, training_args.teacher_model_init_kwargs)
        limit = max_positions(teacher_config)
        if limit is not None and data_args.seq_length > limit:
            raise InputError(
                f"--seq_length {data_args.seq_length} is beyond the teacher's {limit} positions: lower --seq_length."
            )
        del teacher_config
    if len(tokenizer) > output_vocab_size(student):
        raise InputError(
            f"The tokenizer has {len(tokenizer)} tokens but the student's embedding only {output_vocab_size(student)} "
            "rows: use the student's own tokenizer."
        )

    # 4) tokenise and pack (cached by fingerprint: a second run with the same corpus and tokenizer skips this)
    packed = tokenize_and_pack(
        raw, tokenizer, seq_length=data_args.seq_length, text_column=data_args.text_column, num_proc=data_args.num_proc
    )
    eval_dataset = packed["validation"]
    if data_args.max_eval_rows is not None and not data_args.streaming:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_rows, len(eval_dataset))))

    trainer = SALTTrainer(
        model=student,
        args=training_args,
        train_dataset=packed["train"],
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        compute_metrics=next_token_accuracy,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )

    # 5) train, save the student (safetensors) with its tokenizer and the resolved configuration
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    save_run_config(training_args.output_dir, model_args, data_args, training_args)
    metrics = dict(train_result.metrics)
    if training_args.eval_strategy != "no" or training_args.do_eval:
        metrics.update(trainer.evaluate())
    trainer.save_metrics("all", metrics)
    trainer.save_state()
    return {"metrics": metrics, "log_history": trainer.state.log_history, "trainer": trainer}


def main(argv: list[str] | None = None) -> int:
    try:
        model_args, data_args, training_args, run_args = parse_args(argv)
        run(model_args, data_args, training_args, run_args)
    except (InputError, ValueError, FileNotFoundError) as err:
        # Clear message, non-zero exit; the checks above run before anything is written.
        print(f"salt-train: error: {err}", file=sys.stderr)
        return 2
    _end_process_group()
    return 0


def _end_process_group() -> None:
    """Under a multi-process launch, wait for every process and close the group: ZeRO-3 runs can otherwise abort at
    interpreter exit while a process still holds a collective."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
