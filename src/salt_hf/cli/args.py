"""The arguments of salt-train and salt-demo, YAML defaults, and the CLI's one input-error type.

A bug is not bad input: the commands turn only `InputError` into "error: ..." and exit code 2. Library errors that
bad input causes (a missing data file, a config value out of range, a model folder without weights) are converted
into an `InputError` where the input is used, with `as_input_error`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from transformers import HfArgumentParser

from ..config import SALTConfig
from ..models import MODEL_SIZES


class InputError(ValueError):
    """Bad input found before training; the message names the problem and the fix."""


@contextmanager
def as_input_error(*types: type[Exception], prefix: str = "") -> Iterator[None]:
    """Re-raises an exception of `types` from the block as an `InputError` with the same message (after `prefix`)."""
    try:
        yield
    except InputError:
        raise
    except types as err:
        raise InputError(f"{prefix}{err}") from err


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


# ---- parsing --------------------------------------------------------------------------------------------------------


def _field_names(classes) -> set[str]:
    return {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}


def read_yaml_config(path: str, classes=ARG_CLASSES) -> dict[str, Any]:
    """The mapping of argument names to values in the YAML file `path`; every key must name a field of `classes`."""
    if not os.path.isfile(path):
        raise InputError(f"--config {path}: no such file.")
    with open(path) as f, as_input_error(yaml.YAMLError, prefix=f"--config {path}: not valid YAML: "):
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise InputError(f"--config {path}: expected a mapping of argument names to values, got {type(values)}.")
    known = _field_names(classes)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise InputError(f"Unknown key {key!r} in {path}.{hint} `--help` lists every argument.")
    return values


def parse_args(argv: list[str] | None = None, classes=ARG_CLASSES, defaults: dict[str, Any] | None = None):
    """
    One instance of each of `classes` from the flags, over defaults read from `--config file.yaml`, over the
    command's own `defaults` (values that differ from the library's, e.g. salt-train's `save_on_sigterm`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(classes)
    parser.add_argument("--config", default=None, help="YAML file of argument defaults; flags override them.")
    if defaults:
        parser.set_defaults(**defaults)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        config_path = argv[i + 1] if i + 1 < len(argv) else None
        if config_path is None:
            raise InputError("--config needs a YAML file path.")
        del argv[i : i + 2]
    if config_path:
        parser.set_defaults(**read_yaml_config(config_path, classes))
    # argparse exits by itself on a malformed flag; the dataclasses' own checks (__post_init__) raise ValueError
    with as_input_error(ValueError):
        *instances, _ = parser.parse_args_into_dataclasses(args=argv)
    return tuple(instances)


# ---- checks that run before anything is written ---------------------------------------------------------------------


def check_output_dir(training_args: SALTConfig, run_args: RunArguments) -> None:
    out = Path(training_args.output_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output_dir {out} is a file, not a folder: choose a new --output_dir.")
    if not out.exists() or not any(out.iterdir()):
        return
    if training_args.resume_from_checkpoint or run_args.overwrite_output_dir:
        return
    raise InputError(
        f"Output folder {out} already holds files (a previous run?). Nothing was changed. Pass "
        "--resume_from_checkpoint <checkpoint or 'last'> to continue it, --overwrite_output_dir to write into it "
        "anyway, or choose a new --output_dir."
    )


def looks_like_path(name_or_path: str) -> bool:
    """Whether `name_or_path` can only be a folder: a hub id is `name` or `owner/name`, never more."""
    return (
        name_or_path.startswith(("/", ".", "~"))
        or name_or_path.count("/") > 1
        or (os.sep != "/" and os.sep in name_or_path)
    )


def _in_hub_cache(repo_id: str) -> bool:
    for filename in ("config.json", "tokenizer_config.json"):
        try:
            if isinstance(try_to_load_from_cache(repo_id, filename), str):
                return True
        except HFValidationError:  # not a valid repo id
            return False
    return False


def check_model_source(flag: str, name_or_path: str | None) -> None:
    """
    Refuses a model or tokenizer source that cannot load: not an existing folder, and either shaped like a path
    (`looks_like_path`) or a hub id while the hub is offline (HF_HUB_OFFLINE=1) and the id is not in the local cache.
    A hub id is left to `from_pretrained` when online.
    """
    if not name_or_path or os.path.isdir(name_or_path):
        return
    if looks_like_path(name_or_path):
        hint = ""
        if name_or_path.startswith("~") and os.path.isdir(os.path.expanduser(name_or_path)):
            hint = " ('~' is not expanded here: write the full path)"
        raise InputError(f"{flag} {name_or_path}: no such folder{hint}. Give a folder written by save_pretrained.")
    if is_offline_mode() and not _in_hub_cache(name_or_path):
        raise InputError(
            f"{flag} {name_or_path}: no such folder, and the hub is offline (HF_HUB_OFFLINE=1) with no copy of "
            f"{name_or_path!r} in the local cache. Give a folder written by save_pretrained, or download the model "
            "first with the hub online."
        )
