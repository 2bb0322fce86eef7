"""The size-against-repetition study's corpus builder (issue 31, benchmarks/size_repetition/code_corpus.py) on tiny
zip 'wheels' written here: dedup by content, split by file, the same packing as tokenize_and_pack, a deterministic
content hash, and refusals of a changed wheel or a changed corpus. Offline: nothing is downloaded."""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from datasets import Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "size_repetition"))

import code_corpus  # noqa: E402  (a script folder, put on the path above)

from salt_hf.data import tokenize_and_pack, train_bpe_tokenizer  # noqa: E402

DUPLICATE = "def shared(x):\n    return x * 2  # the same bytes in both wheels\n"


def source(i: int, wheel: str) -> str:
    return f'"""Module {i} of {wheel}."""\n\n\ndef f{i}(a, b):\n    total = a + b * {i}\n    return total - {i}\n' * 3


def write_wheel(folder: Path, name: str, files: dict[str, str]) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
        archive.writestr(f"{name}-1.0.dist-info/METADATA", "Name: " + name)  # not a .py file: never read
    return path


@pytest.fixture
def wheels(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "wheels"
    folder.mkdir()
    a = {f"alpha/m{i}.py": source(i, "alpha") for i in range(30)} | {"alpha/util.py": DUPLICATE}
    b = {f"beta/m{i}.py": source(i, "beta") for i in range(30)} | {"beta/copy.py": DUPLICATE}
    return [write_wheel(folder, "alpha", a), write_wheel(folder, "beta", b)]


@pytest.fixture
def recipe(wheels: list[Path], monkeypatch) -> dict:
    # a fifth of the files in each held-out split, so that a few dozen files give each split rows
    monkeypatch.setattr(code_corpus, "DEV_FRACTION", 0.2)
    monkeypatch.setattr(code_corpus, "TEST_FRACTION", 0.2)
    pins = [{"name": w.name.split("-")[0], "wheel": w.name, "sha256": code_corpus.sha256_file(w)} for w in wheels]
    return {"vocab": 300, "seq_length": 16, "wheels": pins}


def test_duplicates_dropped_and_every_file_in_one_split(wheels, recipe):
    splits, dropped = code_corpus.read_sources(wheels)
    keys = [d["key"] for s in code_corpus.SPLITS for d in splits[s]]
    assert dropped == 1  # beta/copy.py: the same bytes as alpha/util.py, which comes first
    assert len(keys) == len(set(keys)) == 61
    assert any(k.endswith("alpha/util.py") for k in keys) and not any(k.endswith("beta/copy.py") for k in keys)
    texts = [d["text"] for s in code_corpus.SPLITS for d in splits[s]]
    assert len(texts) == len(set(texts))  # no content twice
    for split in code_corpus.SPLITS:
        assert splits[split], f"no file in {split}"
        for d in splits[split]:
            assert code_corpus.split_of(d["key"]) == split  # decided by the file's key alone


def test_split_of_depends_on_the_key_only_and_keeps_the_fractions():
    keys = [f"wheel-1.0-py3-none-any.whl/pkg/m{i}.py" for i in range(20000)]
    splits = [code_corpus.split_of(k) for k in keys]
    assert splits == [code_corpus.split_of(k) for k in keys]
    for name, fraction in (("dev", code_corpus.DEV_FRACTION), ("test", code_corpus.TEST_FRACTION)):
        assert splits.count(name) / len(keys) == pytest.approx(fraction, abs=0.005)


def test_pack_equals_tokenize_and_pack(texts):
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300)
    docs = [t[: 300 + 97 * i] for i, t in enumerate(texts * 2)] + [""]  # 13 documents, an empty one among them
    for batch in (1, 5, 1000):  # batch boundaries drop each batch's tail, as tokenize_and_pack does
        ours = code_corpus.pack(docs, tokenizer, seq=32, batch=batch)
        packed = tokenize_and_pack(Dataset.from_dict({"text": docs}), tokenizer, seq_length=32, batch_size=batch)
        assert ours.dtype == torch.int16
        assert ours.tolist() == packed["input_ids"]


def test_build_is_deterministic_and_checked(tmp_path, wheels, recipe):
    first, second = tmp_path / "one", tmp_path / "two"
    info = code_corpus.build(recipe, wheels, first)
    again = code_corpus.build(recipe, wheels, second)
    assert info["content_sha256"] == again["content_sha256"] == code_corpus.content_hash(first)
    tokenizers = [(folder / "tokenizer" / "tokenizer.json").read_bytes() for folder in (first, second)]
    assert tokenizers[0] == tokenizers[1]
    assert info["duplicate_files_dropped"] == 1 and info["vocab"] == 300
    # the layout bench.load_corpus reads: even validation rows are dev rows, odd ones test rows
    dev, test, val = (torch.load(first / f"{n}.pt") for n in ("dev", "test", "validation"))
    n = val.shape[0] // 2
    assert torch.equal(val[0::2], code_corpus.eval_rows(dev, n))
    assert torch.equal(val[1::2], code_corpus.eval_rows(test, n))
    recipe["content_sha256"] = info["content_sha256"]
    assert code_corpus.check(first, recipe)["content_sha256"] == info["content_sha256"]
    # a changed corpus (one token of the training rows) is refused
    train = torch.load(first / "train.pt")
    train[0, 0] = (int(train[0, 0]) + 1) % 300
    torch.save(train, first / "train.pt")
    with pytest.raises(code_corpus.CorpusMismatch, match="content sha256"):
        code_corpus.check(first, recipe)
    with pytest.raises(code_corpus.CorpusMismatch, match="no corpus"):
        code_corpus.check(tmp_path / "none", recipe)


def test_a_changed_input_changes_the_hash_and_a_changed_wheel_is_refused(tmp_path, wheels, recipe):
    base = code_corpus.build(recipe, wheels, tmp_path / "base")["content_sha256"]
    folder = wheels[0].parent
    changed = write_wheel(folder, "alpha", {f"alpha/m{i}.py": source(i + 1, "alpha") for i in range(30)})
    assert code_corpus.build(recipe, wheels, tmp_path / "changed")["content_sha256"] != base
    # the recipe pins the old wheel's sha256: the download step refuses the file now there (no network: it is present)
    with pytest.raises(SystemExit, match="sha256"):
        code_corpus.download(recipe, folder)
    recipe["wheels"][0]["sha256"] = hashlib.sha256(changed.read_bytes()).hexdigest()
    assert code_corpus.download(recipe, folder) == wheels
