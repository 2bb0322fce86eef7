"""Tests of salt_hf.data: corpora, input checks, tokenizer training, packing and its cache."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict, IterableDatasetDict
from transformers import AutoTokenizer, default_data_collator

from salt_hf.data import (
    EOS_TOKEN,
    builtin_corpus,
    load_text_dataset,
    tokenize_and_pack,
    train_bpe_tokenizer,
)

SLICE_BYTES = 200_000
VOCAB = 400
SNIPPET = 'def área(r: float) -> float:\n\treturn 3.14159 * r ** 2  # π r²\n\n\nprint(f"{área(2):.2f}")\n'
# Rows that differ (so the validation rows of two loads can be compared) and hold code-like newlines.
ROWS = [{"text": f"def f{i}(x):\n    return x + {i}\n", "id": i} for i in range(40)]


def held_out_by_hash(key: str, fraction: float) -> bool:
    """Naive reference of the split rule: the first 8 bytes of SHA-256, read big-endian, as a fraction of 2**64."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) < fraction * 2**64


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("datasets_cache"))


@pytest.fixture(scope="module")
def corpus_slice(corpus_cache) -> DatasetDict:
    return builtin_corpus(max_bytes=SLICE_BYTES, cache_dir=corpus_cache)


@pytest.fixture(scope="module")
def bpe(corpus_slice, tmp_path_factory):
    return train_bpe_tokenizer(list(corpus_slice["train"]["text"]), vocab_size=VOCAB)


def write_rows(path, kind: str, rows=ROWS) -> str:
    """Writes `rows` as a file of type `kind` and returns its path."""
    if kind == "txt":
        # one paragraph per row: blank lines separate them
        path.write_text("\n\n".join(row["text"].rstrip("\n") for row in rows) + "\n")
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind in ("jsonl", "jsonl.gz"):
        text = "\n".join(json.dumps(row) for row in rows) + "\n"
        if kind == "jsonl.gz":
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
    elif kind == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))  # quotes the texts, which hold newlines
            writer.writeheader()
            writer.writerows(rows)
    elif kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# builtin corpus
# ---------------------------------------------------------------------------------------------------------------


def test_builtin_full_corpus_split_follows_path_hash(corpus_cache):
    corpus = builtin_corpus(cache_dir=corpus_cache)
    train, validation = list(corpus["train"]["path"]), list(corpus["validation"]["path"])
    assert len(validation) > 0 and len(train) > 10 * len(validation)
    assert not set(train) & set(validation)
    assert train == sorted(train) and validation == sorted(validation)
    assert all(held_out_by_hash(path, 0.05) for path in validation)
    assert not any(held_out_by_hash(path, 0.05) for path in train)
    skipped = {"test", "tests", "site-packages", "idlelib", "__pycache__"}
    assert not any(skipped & set(path.split("/")[:-1]) for path in train + validation)
    assert all(path.endswith(".py") for path in train)
    assert "os.py" in train + validation and "json/decoder.py" in train + validation


def test_builtin_slice_is_deterministic_and_capped(corpus_slice, tmp_path):
    again = builtin_corpus(max_bytes=SLICE_BYTES, cache_dir=str(tmp_path))  # a fresh cache: really rebuilt
    for split in ("train", "validation"):
        assert list(again[split]["path"]) == list(corpus_slice[split]["path"])
        assert list(again[split]["text"]) == list(corpus_slice[split]["text"])
    train, validation = set(corpus_slice["train"]["path"]), set(corpus_slice["validation"]["path"])
    assert train and validation and not train & validation
    assert all(held_out_by_hash(path, 0.05) for path in validation)
    n_bytes = sum(len(text.encode()) for split in corpus_slice.values() for text in split["text"])
    assert 0.5 * SLICE_BYTES < n_bytes <= SLICE_BYTES
    # a larger slice keeps every file of a smaller one in the same split (only the cut last file may grow)
    larger = builtin_corpus(max_bytes=2 * SLICE_BYTES, cache_dir=str(tmp_path))
    assert train <= set(larger["train"]["path"]) and validation <= set(larger["validation"]["path"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"validation_fraction": 0.0}, "strictly between 0 and 1"),
        ({"validation_fraction": 1.0}, "strictly between 0 and 1"),
        ({"validation_fraction": -0.1}, "out of range"),
        ({"max_bytes": 0}, "max_bytes=0"),
    ],
)
def test_builtin_corpus_rejects_bad_arguments(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        builtin_corpus(cache_dir=str(tmp_path), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# local files
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["txt", "json", "jsonl", "csv", "parquet", "jsonl.gz"])
def test_load_text_dataset_reads_every_file_type(kind, tmp_path):
    path = write_rows(tmp_path / f"corpus.{kind}", kind)
    cache = str(tmp_path / "cache")
    data = load_text_dataset(data_files=[path], cache_dir=cache)
    assert isinstance(data, DatasetDict) and set(data) == {"train", "validation"}
    assert len(data["validation"]) == math.ceil(0.05 * len(ROWS))
    assert len(data["train"]) + len(data["validation"]) == len(ROWS)
    texts = list(data["train"]["text"]) + list(data["validation"]["text"])
    if kind == "txt":  # paragraphs lose the newline before the blank line that ends them
        texts, expected = [t.rstrip("\n") for t in texts], [row["text"].rstrip("\n") for row in ROWS]
    else:
        expected = [row["text"] for row in ROWS]
    assert sorted(texts) == sorted(expected)
    again = load_text_dataset(data_files=path, cache_dir=cache)  # a single path as a string works too
    assert list(again["validation"]["text"]) == list(data["validation"]["text"])


def test_load_text_dataset_streaming_holds_out_by_text_hash(tmp_path):
    path = write_rows(tmp_path / "corpus.jsonl", "jsonl")
    data = load_text_dataset(data_files=[path], streaming=True, validation_fraction=0.3)
    assert isinstance(data, IterableDatasetDict)
    train = [row["text"] for row in data["train"]]
    validation = [row["text"] for row in data["validation"]]
    assert sorted(train + validation) == sorted(row["text"] for row in ROWS)
    assert validation and all(held_out_by_hash(text, 0.3) for text in validation)
    assert not any(held_out_by_hash(text, 0.3) for text in train)


def test_load_text_dataset_named_validation_split(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    write_rows(folder / "train.jsonl", "jsonl", ROWS[:30])
    write_rows(folder / "validation.jsonl", "jsonl", ROWS[30:])
    data = load_text_dataset(dataset_name=str(folder), validation_split="validation", cache_dir=str(tmp_path / "c"))
    assert list(data["train"]["text"]) == [row["text"] for row in ROWS[:30]]
    assert list(data["validation"]["text"]) == [row["text"] for row in ROWS[30:]]


def test_load_text_dataset_without_source_is_the_builtin_corpus(monkeypatch, tmp_path):
    data = load_text_dataset(validation_fraction=0.1, cache_dir=str(tmp_path))
    assert all(held_out_by_hash(path, 0.1) for path in data["validation"]["path"])
    assert len(data["train"]) > 100


def bad_input(tmp_path, case: str) -> dict:
    """Arguments of load_text_dataset for one bad input, with its files written under tmp_path."""
    good = write_rows(tmp_path / "good.jsonl", "jsonl")
    if case == "missing":
        return {"data_files": [str(tmp_path / "nope.jsonl")]}
    if case == "directory":
        return {"data_files": [str(tmp_path)]}
    if case == "zero_bytes":
        (tmp_path / "empty.jsonl").write_text("")
        return {"data_files": [good, str(tmp_path / "empty.jsonl")]}
    if case == "whitespace":
        (tmp_path / "blank.txt").write_text("\n \n\n")
        return {"data_files": [str(tmp_path / "blank.txt")]}
    if case == "header_only_csv":
        (tmp_path / "header.csv").write_text("text,id\n")
        return {"data_files": [str(tmp_path / "header.csv")]}
    if case == "malformed":
        (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
        return {"data_files": [str(tmp_path / "bad.jsonl")]}
    if case == "unknown_extension":
        (tmp_path / "notes.docx").write_text("text")
        return {"data_files": [str(tmp_path / "notes.docx")]}
    if case == "mixed_types":
        return {"data_files": [good, write_rows(tmp_path / "more.csv", "csv")]}
    if case in ("text_column", "text_column_streaming"):
        return {"data_files": [good], "text_column": "content", "streaming": case.endswith("streaming")}
    if case == "one_row":
        return {"data_files": [write_rows(tmp_path / "one.jsonl", "jsonl", ROWS[:1])]}
    if case == "missing_split":
        return {"data_files": [good], "validation_split": "validation"}
    if case in ("fraction_zero", "fraction_one"):
        return {"data_files": [good], "validation_fraction": 0.0 if case == "fraction_zero" else 1.0}
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing", ["nope.jsonl", "not found"]),
        ("directory", ["is a directory"]),
        ("zero_bytes", ["empty.jsonl", "empty (0 bytes)"]),
        ("whitespace", ["blank.txt", "only whitespace"]),
        ("header_only_csv", ["header.csv", "at least one row"]),
        ("malformed", ["bad.jsonl", "valid json"]),
        ("unknown_extension", ["notes.docx", "Unknown data file type", ".jsonl", ".parquet"]),
        ("mixed_types", ["mix file types", "csv", "json"]),
        ("text_column", ["'content' not found", "['text', 'id']", "text_column="]),
        ("text_column_streaming", ["'content' not found", "text_column="]),
        ("one_row", ["1 row", "none to train on", "validation_split"]),
        ("missing_split", ["'validation' not found", "['train']"]),
        ("fraction_zero", ["validation_fraction=0.0", "between 0 and 1"]),
        ("fraction_one", ["validation_fraction=1.0", "between 0 and 1"]),
    ],
)
def test_load_text_dataset_bad_input_names_the_problem(case, fragments, tmp_path):
    kwargs = bad_input(tmp_path, case)
    with pytest.raises(ValueError) as info:
        load_text_dataset(cache_dir=str(tmp_path / "cache"), **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# ---------------------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------------------


def test_bpe_tokenizer_save_and_autotokenizer_roundtrip(corpus_slice, tmp_path):
    texts = list(corpus_slice["train"]["text"])
    tokenizer = train_bpe_tokenizer(iter(texts), vocab_size=VOCAB, save_dir=str(tmp_path / "tok"))
    assert len(tokenizer) == VOCAB
    for attr in ("eos_token", "bos_token", "pad_token"):
        assert getattr(tokenizer, attr) == EOS_TOKEN
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert reloaded.eos_token == reloaded.bos_token == reloaded.pad_token == EOS_TOKEN
    assert reloaded.eos_token_id == tokenizer.eos_token_id
    ids = reloaded(SNIPPET)["input_ids"]
    assert ids == tokenizer(SNIPPET)["input_ids"]
    assert tokenizer.eos_token_id not in ids  # no special token added: packing places EOS itself
    assert reloaded.decode(ids) == SNIPPET  # byte-level: exact, unicode, tabs and spacing included
    assert len(ids) < len(SNIPPET.encode())  # merges were learned
    # training is deterministic
    assert train_bpe_tokenizer(texts, vocab_size=VOCAB).get_vocab() == tokenizer.get_vocab()


def test_bpe_tokenizer_rejects_tiny_vocabulary():
    with pytest.raises(ValueError, match="at least 257"):
        train_bpe_tokenizer(["abc"], vocab_size=256)


# ---------------------------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------------------------


def token_stream(tokenizer, texts, add_eos=True) -> list[int]:
    """Reference: every document's ids followed by EOS, concatenated."""
    ids = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if add_eos else [])
    return ids


@pytest.mark.parametrize("add_eos", [True, False])
def test_packing_one_batch_is_the_token_stream_cut_into_blocks(bpe, corpus_slice, add_eos):
    # the empty document adds nothing (no lone EOS)
    texts = list(corpus_slice["validation"]["text"]) + ["", "x = 1\n"]
    data = Dataset.from_dict({"text": texts, "other": list(range(len(texts)))})
    seq_length = 64
    packed = tokenize_and_pack(data, bpe, seq_length, add_eos=add_eos, batch_size=len(texts))
    stream = token_stream(bpe, [t for t in texts if t], add_eos)
    assert packed.column_names == ["input_ids", "labels"]
    assert len(packed) == len(stream) // seq_length > 10
    assert all(len(row) == seq_length for row in packed["input_ids"])
    assert list(packed["labels"]) == list(packed["input_ids"])
    flat = [token for row in packed["input_ids"] for token in row]
    assert flat == stream[: len(flat)]
    assert (bpe.eos_token_id in flat) == add_eos


def test_packing_drops_the_tail_of_each_batch(bpe, corpus_slice):
    texts = list(corpus_slice["train"]["text"])[:9]
    seq_length, batch_size = 128, 4
    packed = tokenize_and_pack(Dataset.from_dict({"text": texts}), bpe, seq_length, batch_size=batch_size)
    expected = sum(
        len(token_stream(bpe, texts[start : start + batch_size])) // seq_length
        for start in range(0, len(texts), batch_size)
    )
    assert len(packed) == expected


def test_packed_rows_collate_to_batch_by_seq_length(bpe, corpus_slice):
    packed = tokenize_and_pack(corpus_slice, bpe, seq_length=32, return_attention_mask=True)
    assert isinstance(packed, DatasetDict) and set(packed) == {"train", "validation"}
    assert len(packed["validation"]) > 0
    batch = default_data_collator([packed["train"][i] for i in range(4)])
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    for value in batch.values():
        assert value.shape == (4, 32)
    assert batch["attention_mask"].all()
    assert batch["input_ids"].max() < len(bpe)


def test_packing_streams_and_multiprocess(bpe, tmp_path):
    path = write_rows(tmp_path / "corpus.jsonl", "jsonl")
    streamed = tokenize_and_pack(load_text_dataset(data_files=[path], streaming=True), bpe, seq_length=16)
    rows = list(streamed["train"])
    assert rows and all(len(row["input_ids"]) == 16 and row["labels"] == row["input_ids"] for row in rows)
    in_memory = load_text_dataset(data_files=[path], cache_dir=str(tmp_path / "cache"))
    # two processes pack two shards; each drops its own tail, so at most one block fewer than one process
    one = tokenize_and_pack(in_memory, bpe, seq_length=16)
    two = tokenize_and_pack(in_memory, bpe, seq_length=16, num_proc=2, batch_size=10)
    assert len(one["train"]) - 4 <= len(two["train"]) <= len(one["train"])
    assert all(len(row) == 16 for row in two["train"]["input_ids"])


def test_packing_reuses_its_cache(bpe, tmp_path):
    cache = str(tmp_path / "cache")
    save_dir = str(tmp_path / "tok")
    bpe.save_pretrained(save_dir)
    first = tokenize_and_pack(builtin_corpus(max_bytes=SLICE_BYTES, cache_dir=cache), bpe, seq_length=64)
    files = {split: [f["filename"] for f in first[split].cache_files] for split in first}
    for split, names in files.items():
        assert len(names) == 1 and os.path.basename(names[0]).startswith("cache-"), (split, names)
    stamps = {name: os.stat(name).st_mtime_ns for names in files.values() for name in names}

    # everything rebuilt from scratch, as in a new run: corpus object and tokenizer object (reloaded from disk)
    tokenizer = AutoTokenizer.from_pretrained(save_dir)
    tokenizer("x", truncation=True, max_length=4)  # changes the backend's truncation state, not the ids
    second = tokenize_and_pack(builtin_corpus(max_bytes=SLICE_BYTES, cache_dir=cache), tokenizer, seq_length=64)
    assert {split: [f["filename"] for f in second[split].cache_files] for split in second} == files
    assert {name: os.stat(name).st_mtime_ns for name in stamps} == stamps  # read, not rewritten
    assert list(second["train"]["input_ids"]) == list(first["train"]["input_ids"])

    # other arguments or another tokenizer: another cache file
    other_length = tokenize_and_pack(builtin_corpus(max_bytes=SLICE_BYTES, cache_dir=cache), bpe, seq_length=48)
    other_tokenizer = train_bpe_tokenizer(["a b c d " * 50, "def f(): pass\n"], vocab_size=280)
    other_vocab = tokenize_and_pack(builtin_corpus(max_bytes=SLICE_BYTES, cache_dir=cache), other_tokenizer, 64)
    names = {other_length["train"].cache_files[0]["filename"], other_vocab["train"].cache_files[0]["filename"]}
    assert len(names | set(files["train"])) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seq_length": 1}, "at least 2 tokens"),
        ({"seq_length": 16, "text_column": "content"}, r"'content' not found .*\['path', 'text'\]"),
    ],
)
def test_packing_rejects_bad_arguments(bpe, corpus_slice, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tokenize_and_pack(corpus_slice, bpe, **kwargs)


def test_packing_needs_eos_to_join_documents(bpe, corpus_slice, tmp_path):
    bpe.save_pretrained(str(tmp_path))
    no_eos = AutoTokenizer.from_pretrained(str(tmp_path))
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="no eos_token"):
        tokenize_and_pack(corpus_slice, no_eos, seq_length=16)
    packed = tokenize_and_pack(corpus_slice["validation"], no_eos, seq_length=16, add_eos=False)
    assert len(packed) > 0
