"""The study's corpus (issue 31): the Python source of pinned wheels, large enough that a ~2M-parameter student on ~20
tokens per parameter sees each token about once.

    python benchmarks/size_repetition/code_corpus.py --build            # download, verify, build, check the hash
    python benchmarks/size_repetition/code_corpus.py --check            # the saved corpus against corpus.json
    python benchmarks/size_repetition/code_corpus.py --build --record   # after changing the recipe: store the new hash

The recipe is corpus.json beside this file: every wheel pinned by version and by the sha256 of the wheel file
(`pip download` refuses nothing by itself; the build refuses a wheel whose hash differs), and the content hash of the
built corpus. Nothing of the corpus is committed; it is built into benchmarks/work/code/ (the wheels under wheels/):

1. the `.py` members of each wheel, read straight from the zip in the recipe's order of wheels and in sorted member
   order, decoded as UTF-8 (errors replaced);
2. deduplicated by the sha256 of their bytes (the first occurrence in that order wins);
3. split into train / dev / test by file, by a hash of `<wheel file name>/<member path>` (no file in two splits);
4. a byte-level BPE of 300 tokens (salt_hf.data.train_bpe_tokenizer, the python corpus's recipe) trained on the train
   split's files in their fixed order;
5. packed as salt_hf.data.tokenize_and_pack packs (batches of 1,000 documents, each followed by EOS, cut into rows of
   128 tokens, each batch's tail dropped), saved as int16 tensors: train.pt, dev.pt, test.pt, and validation.pt, the
   layout bench.load_corpus reads (its even rows are the dev half, its odd rows the test half: EVAL_ROWS of each,
   spread evenly over the split so that every package is in them);
6. info.json with the sizes, the build time and `content_sha256` (over every saved tensor and tokenizer.json), which
   must equal corpus.json's: `--build` and every training run refuse a corpus that differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

# Single-threaded like the benchmarks (two cores shared); set before tokenizers is imported.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "corpus.json"
NAME = "code"  # the corpus's folder under benchmarks/work, as bench.load_corpus names it
DEV_FRACTION, TEST_FRACTION = 0.025, 0.025
VOCAB, SEQ = 300, 128  # the python corpus's BPE and row length (regime_benchmark.py)
PACK_BATCH = 1000  # tokenize_and_pack's default batch of documents (its tail of < SEQ tokens is dropped)
EVAL_ROWS = 256  # bench.EVAL_ROWS: rows per half that bench.load_corpus evaluates on
SPLITS = ("train", "dev", "test")
PIP_PLATFORM = [
    "--no-deps",
    "--only-binary=:all:",
    "--python-version",
    "3.11",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "any",
]


def work_dir() -> Path:
    return HERE.parent / "work" / NAME  # bench.WORK / NAME, without importing bench (and torch's trainer) here


def load_recipe(path: Path = RECIPE) -> dict:
    return json.loads(path.read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- 1. the wheels ------------------------------------------------------------------------------------------------


def find_wheel(folder: Path, pin: dict) -> Path | None:
    """The wheel of `pin` in `folder` (its file name recorded in the recipe), None when absent."""
    path = folder / pin["wheel"]
    return path if path.is_file() else None


def download(recipe: dict, folder: Path) -> list[Path]:
    """Every wheel of the recipe in `folder`, downloaded with pip where missing, each verified against its pinned
    sha256; a mismatch stops the build with the file, the expected and the received hash."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = [p for p in recipe["wheels"] if find_wheel(folder, p) is None]
    if missing:
        pins = [f"{p['name']}=={p['version']}" for p in missing]
        cmd = [sys.executable, "-m", "pip", "download", "-q", *PIP_PLATFORM, "--dest", str(folder), *pins]
        subprocess.run(cmd, check=True)
    paths = []
    for pin in recipe["wheels"]:
        path = find_wheel(folder, pin)
        if path is None:
            raise SystemExit(f"error: pip did not download {pin['wheel']} ({pin['name']}=={pin['version']})")
        got = sha256_file(path)
        if got != pin["sha256"]:
            raise SystemExit(
                f"error: {path} has sha256 {got}, the recipe pins {pin['sha256']}: the wheel changed or is not the "
                "pinned one; delete it to download it again, or change the recipe (and its content hash) on purpose"
            )
        paths.append(path)
    return paths


# ---- 2-3. the source files, deduplicated and split by file ----------------------------------------------------------


def split_of(key: str) -> str:
    """train, dev or test for the file `key` (`<wheel file name>/<member path>`), from a hash of the key alone."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "dev" if u < DEV_FRACTION else "test" if u < DEV_FRACTION + TEST_FRACTION else "train"


def read_sources(wheels: list[Path]) -> tuple[dict[str, list[dict]], int]:
    """The `.py` files of `wheels` (in that order, members sorted) by split, each {"key", "text", "bytes"}, after
    dropping files whose bytes an earlier file already had; and the number dropped."""
    seen: set[bytes] = set()
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    dropped = 0
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for member in sorted(n for n in archive.namelist() if n.endswith(".py")):
                data = archive.read(member)
                digest = hashlib.sha256(data).digest()
                if digest in seen:
                    dropped += 1
                    continue
                seen.add(digest)
                key = f"{wheel.name}/{member}"
                text = data.decode("utf-8", errors="replace")
                splits[split_of(key)].append({"key": key, "text": text, "bytes": len(data)})
    return splits, dropped


# ---- 4-5. tokenizer and rows ----------------------------------------------------------------------------------------


def pack(texts: list[str], tokenizer, seq: int = SEQ, batch: int = PACK_BATCH) -> torch.Tensor:
    """`tokenize_and_pack`'s rows (int16, [rows, seq]) of `texts`, built batch by batch with numpy: 60M tokens as
    Python lists would not fit in memory. tests/test_code_corpus.py checks it against tokenize_and_pack."""
    eos = tokenizer.eos_token_id
    rows = []
    for start in range(0, len(texts), batch):
        docs = [t for t in texts[start : start + batch] if t]
        if not docs:
            continue
        ids = tokenizer(docs, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        stream = np.fromiter((i for doc in ids for i in (*doc, eos)), dtype=np.int16)
        usable = len(stream) // seq * seq  # the batch's tail that does not fill a row is dropped
        rows.append(stream[:usable].reshape(-1, seq))
    return torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, seq), dtype=np.int16))


def eval_rows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """`n` rows spread evenly over a split (its rows follow the wheels' order, so its first rows are one package)."""
    return rows[torch.linspace(0, rows.shape[0] - 1, n).round().long()]


def interleave(dev: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """validation.pt as bench.load_corpus reads it: row 2i is dev row i, row 2i + 1 test row i."""
    out = torch.empty((2 * dev.shape[0], dev.shape[1]), dtype=dev.dtype)
    out[0::2], out[1::2] = dev, test
    return out


TENSORS = ("train", "dev", "test", "validation")


def content_hash(folder: Path) -> str:
    """sha256 over every saved tensor (name, shape, int16 bytes; the bytes of torch.save's zip are not hashed) and
    tokenizer.json."""
    digest = hashlib.sha256()
    for name in TENSORS:
        rows = torch.load(folder / f"{name}.pt")
        digest.update(f"{name}:{tuple(rows.shape)}:{rows.dtype}\n".encode())
        digest.update(rows.contiguous().numpy().astype("<i2").tobytes())
    digest.update((folder / "tokenizer" / "tokenizer.json").read_bytes())
    return digest.hexdigest()


def build(recipe: dict, wheels: list[Path], out: Path) -> dict:
    """Builds the corpus of `wheels` into `out` (train.pt, dev.pt, test.pt, validation.pt, tokenizer/, info.json);
    returns info.json's content."""
    from salt_hf.data import train_bpe_tokenizer

    t0 = time.time()
    splits, dropped = read_sources(wheels)
    texts = {s: [d["text"] for d in splits[s]] for s in SPLITS}
    t_read = time.time() - t0
    tokenizer = train_bpe_tokenizer(texts["train"], vocab_size=recipe["vocab"], save_dir=str(out / "tokenizer"))
    t_bpe = time.time() - t0 - t_read
    rows = {s: pack(texts[s], tokenizer, recipe["seq_length"]) for s in SPLITS}
    if min(r.shape[0] for r in rows.values()) == 0:
        raise ValueError(f"a split without a full row: {', '.join(f'{s} {r.shape[0]}' for s, r in rows.items())}")
    n = min(EVAL_ROWS, rows["dev"].shape[0], rows["test"].shape[0])
    rows["validation"] = interleave(eval_rows(rows["dev"], n), eval_rows(rows["test"], n))
    for name in TENSORS:
        torch.save(rows[name].clone(), out / f"{name}.pt")
    info = {
        "corpus": NAME,
        "vocab": len(tokenizer),
        "seq_length": recipe["seq_length"],
        **{f"{s}_rows": rows[s].shape[0] for s in TENSORS},
        **{f"{s}_tokens": rows[s].numel() for s in SPLITS},
        **{f"{s}_files": len(splits[s]) for s in SPLITS},
        **{f"{s}_bytes_of_text": sum(d["bytes"] for d in splits[s]) for s in SPLITS},
        "duplicate_files_dropped": dropped,
        "wheels": [p.name for p in wheels],
        "build_s": {"read": round(t_read, 1), "bpe": round(t_bpe, 1), "total": None},
        "content_sha256": content_hash(out),
    }
    info["build_s"]["total"] = round(time.time() - t0, 1)
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# ---- 6. the hash check ----------------------------------------------------------------------------------------------


class CorpusMismatch(Exception):
    """The saved corpus is missing or its content differs from the recipe's hash."""


def check(folder: Path | None = None, recipe: dict | None = None) -> dict:
    """The saved corpus's info.json, once its content hash (computed anew from the files) equals the recipe's;
    raises CorpusMismatch otherwise."""
    folder = folder or work_dir()
    recipe = recipe or load_recipe()
    if not (folder / "info.json").is_file():
        raise CorpusMismatch(f"no corpus in {folder}: build it with `python {Path(__file__).name} --build`")
    got, want = content_hash(folder), recipe.get("content_sha256")
    if got != want:
        raise CorpusMismatch(
            f"the corpus in {folder} has content sha256 {got}, the recipe ({RECIPE.name}) expects {want}: rebuild "
            "it (--build), or record a deliberately changed recipe's hash (--build --record)"
        )
    return json.loads((folder / "info.json").read_text())


BUILT = ("train_rows", "train_tokens", "dev_tokens", "test_tokens", "train_bytes_of_text", "train_files")


def record(recipe: dict, info: dict, path: Path = RECIPE) -> None:
    """Stores a build's content hash in the recipe, and its sizes (the summary reads the epochs from them)."""
    recipe["content_sha256"] = info["content_sha256"]
    recipe["built"] = {k: info[k] for k in BUILT}
    path.write_text(json.dumps(recipe, indent=2) + "\n")
    print(f"recorded content sha256 {info['content_sha256']} in {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="store_true", help="download the wheels, build the corpus, check its hash")
    parser.add_argument("--check", action="store_true", help="recompute the saved corpus's hash against the recipe")
    parser.add_argument("--record", action="store_true", help="with --build: store the built hash in the recipe")
    parser.add_argument("--wheels", type=Path, default=None, help="folder of the wheels (default: <work>/wheels)")
    args = parser.parse_args(argv)
    out = work_dir()
    if args.build:
        recipe = load_recipe()
        t0 = time.time()
        wheels = download(recipe, args.wheels or out / "wheels")
        t_download = time.time() - t0
        for stale in (*(out / f"{n}.pt" for n in TENSORS), out / "info.json"):
            stale.unlink(missing_ok=True)
        shutil.rmtree(out / "tokenizer", ignore_errors=True)
        info = build(recipe, wheels, out)
        info["build_s"]["download"] = round(t_download, 1)
        (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        print(json.dumps(info, indent=1))
        if args.record:
            record(recipe, info)
    if args.build or args.check:
        try:
            check(out)
        except CorpusMismatch as err:
            raise SystemExit(f"error: {err}") from None
        print(f"{out}: content sha256 matches {RECIPE.name}")
    if not (args.build or args.check):
        parser.error("--build or --check")


if __name__ == "__main__":
    main()
