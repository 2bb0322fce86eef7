"""Prepares the benchmark corpora: text, a tokenizer per corpus, and packed token rows saved as tensors.

    python benchmarks/regime/prepare_corpora.py                 # both corpora into benchmarks/work/
    python benchmarks/regime/prepare_corpora.py --corpora python

Corpora:
- `python`: the built-in corpus (the standard library's source; salt_hf.data.builtin_corpus), split by file path.
- `prose`: English prose from Debian packages: the World English Bible (sword-text-web, read with diatheke),
  WordNet glosses (wordnet-base) and fortunes. Installed with apt-get when missing and allowed; skipped with a
  message otherwise. Documents (a Bible book, a WordNet part-of-speech file chunk, a fortune file) go to validation
  by a hash of their name, so the held-out text is the same on every machine and no training run sees it.

The packed rows (int16 token ids, vocabulary < 32768) let the training runs go anywhere torch runs, without the
datasets library (the GPU machines have torch but not datasets).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402, F401  (puts every study folder on sys.path)
import torch  # noqa: E402
from bench import WORK  # noqa: E402
from datasets import Dataset, DatasetDict  # noqa: E402

from salt_hf.data import builtin_corpus, tokenize_and_pack, train_bpe_tokenizer  # noqa: E402

VALIDATION_FRACTION = 0.05
APT_PACKAGES = ["sword-text-web", "diatheke", "wordnet-base", "fortunes"]
BIBLE_MODULE = "engWEB2015eb"
BIBLE_BOOKS = (
    "Genesis Exodus Leviticus Numbers Deuteronomy Joshua Judges Ruth 1Samuel 2Samuel 1Kings 2Kings 1Chronicles "
    "2Chronicles Ezra Nehemiah Esther Job Psalms Proverbs Ecclesiastes Song Isaiah Jeremiah Lamentations Ezekiel "
    "Daniel Hosea Joel Amos Obadiah Jonah Micah Nahum Habakkuk Zephaniah Haggai Zechariah Malachi Matthew Mark "
    "Luke John Acts Romans 1Corinthians 2Corinthians Galatians Ephesians Philippians Colossians 1Thessalonians "
    "2Thessalonians 1Timothy 2Timothy Titus Philemon Hebrews James 1Peter 2Peter 1John 2John 3John Jude Revelation"
).split()


def held_out(name: str) -> bool:
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < VALIDATION_FRACTION


def ensure_packages() -> bool:
    if shutil.which("diatheke") and Path("/usr/share/wordnet").is_dir() and Path("/usr/share/games/fortunes").is_dir():
        return True
    if not shutil.which("apt-get") or os.geteuid() != 0:
        print(f"prose corpus skipped: needs the Debian packages {' '.join(APT_PACKAGES)} (apt-get as root).")
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    done = subprocess.run(["apt-get", "install", "-y", "-qq", *APT_PACKAGES], check=False, env=env)
    if done.returncode != 0:
        print("prose corpus skipped: apt-get could not install " + " ".join(APT_PACKAGES))
        return False
    return True


def bible_documents():
    for book in BIBLE_BOOKS:
        cmd = ["diatheke", "-b", BIBLE_MODULE, "-f", "plain", "-k", book]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        # drop the "Book 1:1: " references and the trailing module name; one verse a line
        lines = [re.sub(r"^\S+(?: \S+)? \d+:\d+: ", "", line).strip() for line in out.splitlines()]
        text = "\n".join(line for line in lines if line and not line.startswith("("))
        yield f"bible/{book}", text


def wordnet_documents(rows_per_doc: int = 2000):
    for pos in ("noun", "verb", "adj", "adv"):
        glosses = []
        for line in Path(f"/usr/share/wordnet/data.{pos}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # license header
            fields = line.split(" ")  # offset, lex_filenum, ss_type, w_cnt (hex), then w_cnt (word, lex_id) pairs
            words = fields[4 : 4 + 2 * int(fields[3], 16) : 2]
            gloss = line.split("|", 1)[1].strip()
            glosses.append(f"{', '.join(w.replace('_', ' ') for w in words)}: {gloss}")
        for i in range(0, len(glosses), rows_per_doc):
            yield f"wordnet/{pos}/{i // rows_per_doc}", "\n".join(glosses[i : i + rows_per_doc])


def fortune_documents():
    root = Path("/usr/share/games/fortunes")
    for path in sorted(root.iterdir()):
        if path.suffix or not path.is_file():
            continue  # .dat indexes, .u8 duplicates
        text = path.read_text(encoding="utf-8", errors="replace")
        fortunes = [f.strip() for f in text.split("\n%\n") if f.strip()]
        yield f"fortunes/{path.name}", "\n\n".join(fortunes)


def prose_corpus() -> DatasetDict | None:
    if not ensure_packages():
        return None
    splits = {"train": [], "validation": []}
    for source in (bible_documents(), wordnet_documents(), fortune_documents()):
        for name, text in source:
            splits["validation" if held_out(name) else "train"].append({"name": name, "text": text})
    return DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()})


def write_heldout_text(validation: Dataset, folder: Path) -> None:
    """The held-out documents as plain text, one file each, for the downstream check (downstream_eval.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    for row in validation:
        (folder / (re.sub(r"[^\w.-]+", "_", row["name"]) + ".txt")).write_text(row["text"], encoding="utf-8")


def prepare(name: str, corpus: DatasetDict, vocab: int, seq_length: int) -> dict:
    out = WORK / name
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe_tokenizer(corpus["train"]["text"], vocab_size=vocab, save_dir=str(out / "tokenizer"))
    packed = tokenize_and_pack(corpus, tokenizer, seq_length=seq_length)
    info = {"corpus": name, "vocab": len(tokenizer), "seq_length": seq_length}
    for split in ("train", "validation"):
        rows = torch.tensor(packed[split]["input_ids"], dtype=torch.int16)
        torch.save(rows, out / f"{split}.pt")
        info[f"{split}_rows"] = rows.shape[0]
        info[f"{split}_bytes_of_text"] = sum(len(t.encode()) for t in corpus[split]["text"])
        info[f"{split}_documents"] = len(corpus[split])
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    write_heldout_text(corpus["validation"], out / "heldout")
    print(json.dumps(info))
    return info


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpora", default="python,prose")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--seq_length", type=int, default=128)
    args = parser.parse_args()
    for name in args.corpora.split(","):
        corpus = builtin_corpus(validation_fraction=VALIDATION_FRACTION) if name == "python" else prose_corpus()
        if corpus is None:
            continue
        if name == "python":
            corpus = corpus.rename_column("path", "name") if "path" in corpus["train"].column_names else corpus
        prepare(name, corpus, args.vocab, args.seq_length)


if __name__ == "__main__":
    sys.exit(main())
