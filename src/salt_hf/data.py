"""Corpora, tokenizer training and sequence packing for causal-LM pretraining.

Three sources of text, all returned as a `DatasetDict` (or `IterableDatasetDict` when streaming) with the splits
"train" and "validation":

- [`builtin_corpus`]: the `.py` files of the running interpreter's standard library, so a run works with no
  download at all (the machines this project targets may have no route to the Hub).
- [`load_text_dataset`]: local txt / json / jsonl / csv / parquet files, or a Hub dataset.
- either of the above, packed by [`tokenize_and_pack`] into rows of exactly `seq_length` tokens with `labels`
  equal to `input_ids` (the model or the trainer shifts them), ready for `transformers.default_data_collator`.

Every input check raises a `ValueError` that names the problem and the fix, before any model is built.
This module is pure data: it never imports the trainer or the command line.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from accelerate.logging import get_logger
from accelerate.state import PartialState
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict, load_dataset
from datasets.exceptions import DatasetGenerationError
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = get_logger(__name__)

EOS_TOKEN = "<|endoftext|>"

# File suffix -> datasets' packaged builder. ".json" holds either a JSON array or JSON lines; the json builder
# reads both.
DATA_FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
# datasets decompresses these transparently, so "corpus.jsonl.gz" is read as jsonl.
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")

# Folders of the standard library left out of the built-in corpus, at any depth:
# - site-packages / dist-packages: third-party code that differs from one installation to the next;
# - test, tests, idle_test: the test suites are a different genre (assertion boilerplate) and hold deliberately
#   broken files (bad encodings, syntax errors) written to test the tokenizer and the compiler;
# - idlelib, tkinter, turtledemo, lib2to3, distutils, ensurepip: Debian and Ubuntu ship these (and the tests) in
#   separate packages, so leaving them out keeps the corpus nearly the same on a distribution Python and on a
#   python.org / pyenv build of the same version.
_STDLIB_SKIPPED_DIRS = frozenset(
    {
        "__pycache__",
        "dist-packages",
        "distutils",
        "ensurepip",
        "idle_test",
        "idlelib",
        "lib2to3",
        "site-packages",
        "test",
        "tests",
        "tkinter",
        "turtledemo",
    }
)
# Bumped whenever what the builtin corpus or the packing writes changes, so stale cache files are never reused.
_CACHE_VERSION = "salt_hf.data/1"


def _log_info(message: str) -> None:
    # accelerate's logger raises until some PartialState exists, which is the case when data is prepared before
    # the Trainer (a notebook, a test). Creating a PartialState here instead would fix the distributed backend and
    # timeout before TrainingArguments can choose them, so fall back to the plain logger on the first process.
    if PartialState._shared_state:
        logger.info(message, main_process_only=True)
    elif int(os.environ.get("RANK", "0")) == 0:
        logging.getLogger(__name__).info(message)


def _unit_hash(key: str) -> float:
    """A number in [0, 1) from `key`, the same in every process, run and machine (unlike the salted `hash()`)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def _check_fraction(validation_fraction: float) -> None:
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"validation_fraction={validation_fraction} is out of range: it must lie strictly between 0 and 1 "
            "(e.g. 0.05 holds out 5% of the training data)."
        )


# ---------------------------------------------------------------------------------------------------------------
# Built-in corpus: the standard library's own sources
# ---------------------------------------------------------------------------------------------------------------


def _stdlib_files(root: Path) -> list[tuple[str, int, int]]:
    """(path relative to `root` in POSIX form, size in bytes, mtime in ns) of every corpus file, sorted by path."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        # config-3.x-<platform> holds the build's Makefile and helpers, not library code
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIPPED_DIRS and not d.startswith("config-")]
        for name in filenames:
            path = Path(dirpath, name)
            # empty files (many __init__.py) would only add empty rows
            if name.endswith(".py") and (stat := path.stat()).st_size > 0:
                files.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return sorted(files)


def _select_within_budget(files: list[tuple[str, int, int]], budget: int | None) -> list[tuple[str, int, int, int]]:
    """(path, size, mtime, bytes to read) for the files of one split, taken in hash order until `budget` bytes.

    Hash order rather than path order makes a small slice a sample of the whole library instead of its first
    alphabetical packages; and a larger budget takes the same files as a smaller one, plus more.
    """
    if budget is None:
        return [(path, size, mtime, size) for path, size, mtime in files]
    chosen, left = [], budget
    for path, size, mtime in sorted(files, key=lambda f: (_unit_hash(f[0]), f[0])):
        if left <= 0:
            break
        take = min(size, left)
        if take > 0:
            chosen.append((path, size, mtime, take))
            left -= take
    return sorted(chosen)


def _read_stdlib_files(root: str, files: list[tuple[str, int, int, int]]) -> Iterator[dict[str, str]]:
    # Module-level, so that datasets and its worker processes can pickle it by reference.
    for path, size, _, take in files:
        data = (Path(root) / path).read_bytes()
        if take < size:
            # Cut at a line end so a truncated file still reads as code; cut mid-line only if no line fits.
            end = data.rfind(b"\n", 0, take) + 1
            data = data[: end or take]
        yield {"path": path, "text": data.decode("utf-8", errors="replace")}


def builtin_corpus(
    validation_fraction: float = 0.05, max_bytes: int | None = None, cache_dir: str | None = None
) -> DatasetDict:
    """The Python standard library's `.py` sources of the running interpreter, one row per file.

    Files come from `sysconfig.get_paths()["stdlib"]`, without site-packages, the test suites and the packages that
    Linux distributions ship separately (see `_STDLIB_SKIPPED_DIRS`). A file is held out for validation when a
    SHA-256 hash of its path relative to the stdlib root falls below `validation_fraction`, so the same files are
    held out on every run and machine, and a file never changes split when `max_bytes` changes. Text is read as
    UTF-8 with `errors="replace"`. Rows are sorted by path.

    The rows are written once to Arrow files under `cache_dir` (datasets' `Dataset.from_generator`), keyed by the
    paths, sizes and modification times of the files read. A dataset backed by cache files is what lets
    [`tokenize_and_pack`] reuse its own results on the next run.

    Args:
        validation_fraction (`float`, *optional*, defaults to `0.05`):
            Expected fraction of the files held out, strictly between 0 and 1.
        max_bytes (`int`, *optional*):
            Cap on the total size of the text in bytes, for tests and quick runs. Each split gets its share of the
            budget (`validation_fraction` of it for validation) and takes files in the order of their path hash;
            the last file taken is cut at a line end to fit. Unset: every file.
        cache_dir (`str`, *optional*):
            Where datasets writes the Arrow files; defaults to datasets' cache (`HF_DATASETS_CACHE`).

    Returns:
        `datasets.DatasetDict`: splits "train" and "validation", columns "path" (relative to the stdlib root) and
        "text".
    """
    _check_fraction(validation_fraction)
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes={max_bytes} must be a positive number of bytes, or None for the whole corpus.")
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = _stdlib_files(root)
    held_out = [f for f in files if _unit_hash(f[0]) < validation_fraction]
    kept = [f for f in files if _unit_hash(f[0]) >= validation_fraction]
    if not held_out or not kept:
        raise ValueError(
            f"validation_fraction={validation_fraction} leaves an empty split of the {len(files)} stdlib files in "
            f"{root}: choose a fraction further from 0 and 1."
        )
    budgets: dict[str, int | None] = {"train": None, "validation": None}
    if max_bytes is not None:
        # at least one byte each, so a tiny cap still gives two non-empty splits
        budgets["validation"] = max(1, round(max_bytes * validation_fraction))
        budgets["train"] = max(1, max_bytes - budgets["validation"])

    splits, sizes = {}, {}
    for split, pool in (("train", kept), ("validation", held_out)):
        chosen = _select_within_budget(pool, budgets[split])
        key = json.dumps([_CACHE_VERSION, str(root), split, chosen])
        splits[split] = Dataset.from_generator(
            _read_stdlib_files,
            gen_kwargs={"root": str(root), "files": chosen},
            cache_dir=cache_dir,
            split=split,
            fingerprint=hashlib.sha256(key.encode("utf-8")).hexdigest()[:32],
        )
        sizes[split] = f"{len(chosen)} files, {sum(f[3] for f in chosen)} bytes"
    _log_info(f"Built-in corpus from {root}: train {sizes['train']}; validation {sizes['validation']}.")
    return DatasetDict(splits)


# ---------------------------------------------------------------------------------------------------------------
# Local files and Hub datasets
# ---------------------------------------------------------------------------------------------------------------


def _builder_for(path: str) -> str:
    name = path.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    builder = DATA_FILE_BUILDERS.get(os.path.splitext(name)[1])
    if builder is None:
        raise ValueError(
            f"Unknown data file type: {path!r}. Supported extensions: {', '.join(DATA_FILE_BUILDERS)} (optionally "
            f"compressed: {', '.join(_COMPRESSION_SUFFIXES)}); rename the file or convert it to one of these."
        )
    return builder


def _has_content(path: str) -> bool:
    """Whether an uncompressed text file holds anything but whitespace (reads only up to the first such byte)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return True
    return False


def _check_data_files(data_files: list[str]) -> str:
    """Checks that the files exist, are not empty and share one type; returns datasets' builder for that type."""
    builders = {}
    for path in data_files:
        if not os.path.isfile(path):
            what = "is a directory, not a file" if os.path.isdir(path) else "not found"
            raise ValueError(f"Data file {path!r} {what}: check the path (data_files takes a list of files).")
        builders[path] = _builder_for(path)
        if os.path.getsize(path) == 0:
            raise ValueError(f"Data file {path!r} is empty (0 bytes): remove it from data_files or fill it.")
        compressed = path.lower().endswith(_COMPRESSION_SUFFIXES)
        if builders[path] != "parquet" and not compressed and not _has_content(path):
            raise ValueError(f"Data file {path!r} is empty (only whitespace): remove it from data_files or fill it.")
    kinds = sorted(set(builders.values()))
    if len(kinds) > 1:
        raise ValueError(
            f"data_files mix file types ({', '.join(kinds)}): datasets reads one type per dataset; convert them to "
            "one type or train on one group. Files: " + ", ".join(f"{p} ({b})" for p, b in builders.items())
        )
    return kinds[0]


def _column_names(dataset: Dataset | IterableDataset) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    # A stream read from json lines does not know its columns before the first row.
    first = next(iter(dataset.take(1)), None)
    return [] if first is None else list(first)


def _check_split(dataset: Dataset | IterableDataset, split: str, text_column: str, source: str) -> None:
    columns = _column_names(dataset)
    if not columns:
        raise ValueError(f"Split {split!r} of {source} has no rows: it would give nothing to train or evaluate on.")
    if text_column not in columns:
        raise ValueError(
            f"Text column {text_column!r} not found in split {split!r} of {source}; its columns are {columns}. "
            "Pass text_column=<one of these>."
        )
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise ValueError(f"Split {split!r} of {source} has no rows: it would give nothing to train or evaluate on.")


def _is_validation_row(example: dict[str, Any], text_column: str, validation_fraction: float) -> bool:
    return _unit_hash(example[text_column] or "") < validation_fraction


def _is_training_row(example: dict[str, Any], text_column: str, validation_fraction: float) -> bool:
    # a named function, not a lambda: DataLoader workers started with "spawn" must pickle the stream
    return not _is_validation_row(example, text_column, validation_fraction)


def load_text_dataset(
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    data_files: list[str] | str | None = None,
    text_column: str = "text",
    train_split: str = "train",
    validation_split: str | None = None,
    validation_fraction: float = 0.05,
    streaming: bool = False,
    seed: int = 42,
    txt_sample_by: Literal["line", "paragraph", "document"] = "paragraph",
    cache_dir: str | None = None,
) -> DatasetDict | IterableDatasetDict:
    """Loads a text corpus as splits "train" and "validation", checking it before any training starts.

    With `data_files` (and no `dataset_name`), the files are read with datasets' builder for their extension
    (txt, json, jsonl, csv, parquet, optionally compressed); all files must share one type. With `dataset_name`, it
    is passed to `datasets.load_dataset` with `dataset_config` (and `data_files`, then relative to that dataset).
    With neither, the result is [`builtin_corpus`].

    When no `validation_split` is named, `validation_fraction` of the train split is held out: with
    `train_test_split(seed=seed)` for a dataset in memory, and for a stream (whose length is unknown) by a SHA-256
    hash of each row's text, so that a row's split is fixed whatever the order of the stream.

    Args:
        dataset_name (`str`, *optional*):
            Hub dataset id or local dataset folder.
        dataset_config (`str`, *optional*):
            Configuration of `dataset_name`.
        data_files (`list[str]` or `str`, *optional*):
            Local files of one type: .txt, .json, .jsonl, .csv or .parquet.
        text_column (`str`, *optional*, defaults to `"text"`):
            Column holding the text. Files of type txt always have "text".
        train_split (`str`, *optional*, defaults to `"train"`):
            Split to train on. Local files are always read as split "train".
        validation_split (`str`, *optional*):
            Split to evaluate on; unset: hold out `validation_fraction` of the train split.
        validation_fraction (`float`, *optional*, defaults to `0.05`):
            Fraction held out when no validation split is named, strictly between 0 and 1.
        streaming (`bool`, *optional*, defaults to `False`):
            Read lazily (for corpora larger than memory or disk); returns an `IterableDatasetDict`.
        seed (`int`, *optional*, defaults to `42`):
            Seed of the shuffle that chooses the held-out rows of a dataset in memory.
        txt_sample_by (`str`, *optional*, defaults to `"paragraph"`):
            One row of a .txt file: a "paragraph" (text between blank lines), a "line" or a whole "document". Every
            row ends with EOS when packed, so "line" would end every line of prose or code with EOS.
        cache_dir (`str`, *optional*):
            datasets' cache folder; defaults to `HF_DATASETS_CACHE`.

    Returns:
        `datasets.DatasetDict` or `datasets.IterableDatasetDict`: splits "train" and "validation" with the columns of
        the source.
    """
    _check_fraction(validation_fraction)
    if isinstance(data_files, str):
        data_files = [data_files]
    if dataset_name is None and not data_files:
        corpus = builtin_corpus(validation_fraction=validation_fraction, cache_dir=cache_dir)
        if streaming:
            return IterableDatasetDict({name: ds.to_iterable_dataset() for name, ds in corpus.items()})
        return corpus

    if dataset_name is None:
        builder = _check_data_files(data_files)
        source = f"data_files {data_files}"
        kwargs = {"sample_by": txt_sample_by, "keep_linebreaks": True} if builder == "text" else {}
        load_args = (builder,)
        kwargs["data_files"] = list(data_files)
    else:
        source = f"dataset {dataset_name!r}" + (f" ({dataset_config})" if dataset_config else "")
        load_args = (dataset_name, dataset_config)
        kwargs = {"data_files": data_files} if data_files else {}
    try:
        raw = load_dataset(*load_args, streaming=streaming, cache_dir=cache_dir, **kwargs)
    except (DatasetGenerationError, ValueError) as err:
        if dataset_name is not None and not isinstance(err, DatasetGenerationError):
            raise
        # e.g. a csv file with a header and no rows: datasets says 'Instruction "train" corresponds to no data!'
        raise ValueError(
            f"Could not read rows from {source} ({err.__cause__ or err}): check that every file is valid "
            f"{load_args[0]} and holds at least one row."
        ) from err
    for split in (train_split, validation_split):
        if split is not None and split not in raw:
            raise ValueError(
                f"Split {split!r} not found in {source}; its splits are {sorted(raw)}. "
                + ("Local files are read as split 'train'." if dataset_name is None else "Name one of these.")
            )
    try:
        # a stream is read here for the first time, so this is where a malformed file shows
        _check_split(raw[train_split], train_split, text_column, source)
        if validation_split is not None:
            _check_split(raw[validation_split], validation_split, text_column, source)
    except DatasetGenerationError as err:
        raise ValueError(f"Could not read {source} ({err.__cause__ or err}): check the files' format.") from err

    train = raw[train_split]
    if validation_split is not None:
        validation = raw[validation_split]
    elif streaming:
        held_out = {"text_column": text_column, "validation_fraction": validation_fraction}
        validation = train.filter(_is_validation_row, fn_kwargs=held_out)
        train = train.filter(_is_training_row, fn_kwargs=held_out)
    else:
        n_validation = math.ceil(validation_fraction * len(train))
        if n_validation >= len(train):
            raise ValueError(
                f"Split {train_split!r} of {source} has {len(train)} row(s): holding out validation_fraction="
                f"{validation_fraction} would leave none to train on. Add data, lower validation_fraction or name a "
                "validation_split."
            )
        parts = train.train_test_split(test_size=validation_fraction, shuffle=True, seed=seed)
        train, validation = parts["train"], parts["test"]
    result_type = IterableDatasetDict if streaming else DatasetDict
    return result_type({"train": train, "validation": validation})


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer for pretraining from scratch
# ---------------------------------------------------------------------------------------------------------------


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, save_dir: str | None = None) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE tokenizer (GPT-2 style) on `texts`.

    Byte-level: every byte has a token, so any text encodes without an unknown token and decodes back exactly.
    `"<|endoftext|>"` is the only special token and serves as EOS, BOS and padding; packed rows need no padding,
    but note that a collator that masks padding in the labels (e.g. `DataCollatorForLanguageModeling`) would then
    mask EOS as well. A few seconds for ~5 MB of text.

    Args:
        texts (`Iterable[str]`):
            Training text, e.g. one document at a time; empty items are skipped. Read once.
        vocab_size (`int`):
            Size of the vocabulary, special token included; at least 257 (256 bytes and EOS).
        save_dir (`str`, *optional*):
            Folder to `save_pretrained` into, so that `AutoTokenizer.from_pretrained(save_dir)` reloads it.

    Returns:
        `transformers.PreTrainedTokenizerFast`: with `eos_token`, `bos_token` and `pad_token` set to EOS.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs {len(alphabet)} byte tokens plus "
            f"{EOS_TOKEN!r}, so at least {len(alphabet) + 1}."
        )
    backend = Tokenizer(models.BPE())
    # add_prefix_space=False: a leading space would change the first token of every document and of code
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets over the spaces that byte-level tokens carry
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=alphabet, show_progress=False
    )
    n_chars = 0

    def counted(items: Iterable[str]) -> Iterator[str]:
        nonlocal n_chars
        for text in items:
            if text:
                n_chars += len(text)
                yield text

    backend.train_from_iterator(counted(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        # the default clean-up removes spaces before punctuation, which would change decoded code
        clean_up_tokenization_spaces=False,
    )
    _log_info(f"Trained a byte-level BPE tokenizer: {len(tokenizer)} tokens from {n_chars} characters.")
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Tokenisation and packing
# ---------------------------------------------------------------------------------------------------------------


def _tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides the token ids, stable across processes (pickling a tokenizer is not: datasets#3638)."""
    if tokenizer.is_fast:
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        # Calling a fast tokenizer with truncation or padding rewrites these in place; they do not change ids here.
        state.pop("truncation", None)
        state.pop("padding", None)
        payload = json.dumps(state, sort_keys=True)
    else:
        payload = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])
    payload += json.dumps([tokenizer.eos_token_id, tokenizer.all_special_tokens])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _pack_batch(
    batch: dict[str, list[Any]],
    tokenizer: PreTrainedTokenizerBase,
    text_column: str,
    seq_length: int,
    eos_token_id: int | None,
    return_attention_mask: bool,
) -> dict[str, list[list[int]]]:
    texts = [text for text in batch[text_column] if text]
    if not texts:
        return {"input_ids": [], "labels": [], **({"attention_mask": []} if return_attention_mask else {})}
    # No special tokens: documents are joined by EOS below instead of each getting the tokenizer's BOS/EOS.
    # verbose=False: documents longer than model_max_length are expected here, they are cut into blocks.
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    if eos_token_id is not None:
        ids = [doc + [eos_token_id] for doc in ids]
    stream = list(itertools.chain.from_iterable(ids))
    # The tail that does not fill a block is dropped, per batch of documents.
    blocks = [stream[start : start + seq_length] for start in range(0, len(stream) - seq_length + 1, seq_length)]
    packed = {"input_ids": blocks, "labels": [block.copy() for block in blocks]}
    if return_attention_mask:
        packed["attention_mask"] = [[1] * seq_length for _ in blocks]
    return packed


def _pack_one(
    dataset: Dataset | IterableDataset,
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    fn_kwargs: dict[str, Any],
    num_proc: int | None,
    batch_size: int,
    tokenizer_hash: str,
) -> Dataset | IterableDataset:
    columns = _column_names(dataset)
    if fn_kwargs["text_column"] not in columns:
        raise ValueError(
            f"Text column {fn_kwargs['text_column']!r} not found in split {name!r}; its columns are {columns}. "
            "Pass text_column=<one of these>."
        )
    map_kwargs = {"batched": True, "batch_size": batch_size, "remove_columns": columns, "fn_kwargs": fn_kwargs}
    if isinstance(dataset, IterableDataset):
        return dataset.map(_pack_batch, **map_kwargs)
    # Our own fingerprint instead of datasets' hash of the function's arguments: hashing the tokenizer object is
    # not stable across runs (datasets#3638), and an unstable fingerprint silently disables the cache.
    key = [_CACHE_VERSION, dataset._fingerprint, tokenizer_hash, batch_size]
    key.append({k: v for k, v in fn_kwargs.items() if k != "tokenizer"})
    return dataset.map(
        _pack_batch,
        **map_kwargs,
        num_proc=num_proc,
        new_fingerprint=hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:32],
        desc=f"Tokenizing and packing {name}",
    )


def tokenize_and_pack(
    dataset: DatasetDict | IterableDatasetDict | Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    seq_length: int,
    text_column: str = "text",
    num_proc: int | None = None,
    add_eos: bool = True,
    batch_size: int = 1000,
    return_attention_mask: bool = False,
) -> DatasetDict | IterableDatasetDict | Dataset | IterableDataset:
    """Tokenises every row and packs the token stream into rows of exactly `seq_length` tokens.

    Within each batch of `batch_size` rows the documents are tokenised without special tokens, each is followed by
    EOS (`add_eos`), and the concatenation is cut into blocks of `seq_length`; the tail of each batch that does not
    fill a block is dropped (fewer than `seq_length` tokens per `batch_size` documents). Blocks may span documents
    and attention is not reset at EOS, as in GPT-2-style pretraining. `labels` is a copy of `input_ids`; the model
    or the trainer shifts it. `transformers.default_data_collator` stacks the rows into `[batch, seq_length]`.

    Results of datasets backed by cache files (the built-in corpus, files read with [`load_text_dataset`]) are cached
    next to them under a fingerprint of the source, the tokenizer's vocabulary and rules and these arguments, so a
    second call with the same inputs reads the cache instead of tokenising again. Streams are packed lazily.

    Args:
        dataset (`DatasetDict`, `IterableDatasetDict`, `Dataset` or `IterableDataset`):
            Text to pack; every split is packed and all its columns are replaced.
        tokenizer (`PreTrainedTokenizerBase`):
            Tokenizer with an `eos_token_id` when `add_eos`.
        seq_length (`int`):
            Tokens per row, at least 2 (one input and its next-token target).
        text_column (`str`, *optional*, defaults to `"text"`):
            Column holding the text; rows where it is empty or None are skipped.
        num_proc (`int`, *optional*):
            Processes for `Dataset.map` (ignored for streams).
        add_eos (`bool`, *optional*, defaults to `True`):
            Append EOS after each document, so the model learns where documents end.
        batch_size (`int`, *optional*, defaults to `1000`):
            Documents packed together; the tail of each batch is dropped.
        return_attention_mask (`bool`, *optional*, defaults to `False`):
            Also write an all-ones "attention_mask". Off: packed rows hold no padding, so a mask changes nothing
            and only costs cache space.

    Returns:
        The same type as `dataset`, with columns "input_ids" and "labels" (and "attention_mask"), each a list of
        `seq_length` ints per row.
    """
    if not isinstance(seq_length, int) or seq_length < 2:
        raise ValueError(f"seq_length={seq_length!r}: need at least 2 tokens per row (an input and its target).")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1.")
    if add_eos and tokenizer.eos_token_id is None:
        raise ValueError(
            "add_eos=True but the tokenizer has no eos_token: set tokenizer.eos_token (documents are joined by EOS) "
            "or pass add_eos=False."
        )
    fn_kwargs = {
        "tokenizer": tokenizer,
        "text_column": text_column,
        "seq_length": seq_length,
        "eos_token_id": tokenizer.eos_token_id if add_eos else None,
        "return_attention_mask": return_attention_mask,
    }
    tokenizer_hash = _tokenizer_fingerprint(tokenizer)
    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        return type(dataset)(
            {
                name: _pack_one(split, name, tokenizer, fn_kwargs, num_proc, batch_size, tokenizer_hash)
                for name, split in dataset.items()
            }
        )
    return _pack_one(dataset, "dataset", tokenizer, fn_kwargs, num_proc, batch_size, tokenizer_hash)
