"""The SALT_DS score cache: fingerprints of data and teacher, the offline scoring pass in shards, atomic writes.

`score_dataset` spreads the teacher's pass over the processes of a launch; each finished shard is a file written
under a temporary name and renamed, so an interrupted run recomputes only the shards it had not finished, and a
second run with the same data and teacher reads the joined scores without running the teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import Subset

from ..losses.head import NotFusableError, Probe, output_layer, teacher_hidden
from .scores import chunked_sequence_scores, sequence_scores

logger = logging.getLogger(__name__)

# Bump when the score's definition or the cache layout changes: old caches are then never reused.
SCORE_VERSION = 1


def default_score_cache_dir() -> str:
    """`<HF datasets cache>/salt_hf_scores` (`HF_DATASETS_CACHE` is honoured), without needing `datasets`."""
    root = os.environ.get("HF_DATASETS_CACHE")
    if root is None:
        try:
            import datasets

            root = str(datasets.config.HF_DATASETS_CACHE)
        except ImportError:
            root = os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "datasets")
    return os.path.join(root, "salt_hf_scores")


def _hash_update(digest, value: Any) -> None:
    digest.update(json.dumps(value, sort_keys=True, default=str).encode())


def model_fingerprint(model: torch.nn.Module) -> str:
    """A content hash of a model: its config and every parameter and buffer (bytes, dtype, shape)."""
    digest = hashlib.blake2b(digest_size=16)
    config = getattr(model, "config", None)
    _hash_update(digest, config.to_dict() if hasattr(config, "to_dict") else type(model).__name__)
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        _hash_update(digest, [name, str(t.dtype), list(t.shape)])
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def path_fingerprint(path: str | os.PathLike, init_kwargs: dict | None = None) -> str | None:
    """A content hash of a local model folder (every file's bytes) and the loading kwargs; None if not a folder."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    digest = hashlib.blake2b(digest_size=16)
    _hash_update(digest, init_kwargs or {})
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        if file.suffix in {".safetensors", ".bin", ".json", ".model", ".txt"}:
            digest.update(str(file.relative_to(folder)).encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
    return digest.hexdigest()


def subset_for_scoring(dataset, max_sequences: int | None, seed: int) -> tuple[Any, np.ndarray | None, str]:
    """
    The part of `dataset` SALT_DS scores: all of it, or a seeded random subset of `max_sequences` rows (sorted
    indices). Returns (rows to score, their indices or None for all, a fingerprint of exactly those rows).
    """
    fingerprint = dataset_fingerprint(dataset)
    n = len(dataset)
    if max_sequences is None or max_sequences >= n:
        return dataset, None, fingerprint
    pool = np.sort(np.random.default_rng(seed).permutation(n)[:max_sequences])
    digest = hashlib.blake2b(pool.tobytes(), digest_size=12).hexdigest()
    rows = dataset.select(pool) if hasattr(dataset, "select") and hasattr(dataset, "column_names") else None
    return (rows if rows is not None else Subset(dataset, pool.tolist())), pool, f"{fingerprint}-pool-{digest}"


def dataset_fingerprint(dataset) -> str:
    """`datasets.Dataset`'s own fingerprint, else a hash of every row's token ids and labels."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint:
        return f"datasets-{fingerprint}"
    digest = hashlib.blake2b(digest_size=16)
    for i in range(len(dataset)):
        row = dataset[i]
        for key in ("input_ids", "labels", "attention_mask", "position_ids"):
            if key in row:
                digest.update(key.encode())
                digest.update(np.asarray(row[key], dtype=np.int64).tobytes())
    return f"rows-{digest.hexdigest()}"


def _rows(dataset, start: int, stop: int) -> dict[str, list]:
    """Rows `[start, stop)` as columns (one read for a `datasets.Dataset`)."""
    if hasattr(dataset, "select") and hasattr(dataset, "column_names"):  # datasets.Dataset
        return dataset[start:stop]
    rows = [dataset[i] for i in range(start, stop)]
    return {key: [row[key] for row in rows] for key in rows[0]}


def _as_list(value) -> list:
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _batch(block: dict[str, list], ignore_index: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One batch from a block of rows; rows of unequal length are right-padded (mask 0, label `ignore_index`)."""
    ids_rows = [_as_list(r) for r in block["input_ids"]]
    label_rows = [_as_list(r) for r in block["labels"]] if "labels" in block else ids_rows
    lengths = [len(r) for r in ids_rows]
    length, n = max(lengths), len(ids_rows)
    if min(lengths) == length:  # packed rows: no padding
        batch = {"input_ids": torch.tensor(ids_rows), "labels": torch.tensor(label_rows)}
        if "attention_mask" in block:
            batch["attention_mask"] = torch.tensor([_as_list(r) for r in block["attention_mask"]])
        if "position_ids" in block:
            batch["position_ids"] = torch.tensor([_as_list(r) for r in block["position_ids"]])
    else:
        batch = {
            "input_ids": torch.zeros(n, length, dtype=torch.long),
            "attention_mask": torch.zeros(n, length, dtype=torch.long),
            "labels": torch.full((n, length), ignore_index, dtype=torch.long),
        }
        if "position_ids" in block:
            batch["position_ids"] = torch.zeros(n, length, dtype=torch.long)
        for i, k in enumerate(lengths):
            batch["input_ids"][i, :k] = torch.tensor(ids_rows[i])
            batch["labels"][i, :k] = torch.tensor(label_rows[i])
            batch["attention_mask"][i, :k] = (
                torch.tensor(_as_list(block["attention_mask"][i])) if "attention_mask" in block else 1
            )
            if "position_ids" in block:
                batch["position_ids"][i, :k] = torch.tensor(_as_list(block["position_ids"][i]))
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def score_cache_key(dataset_fp: str, teacher_fp: str, *, top_k: int, ignore_index: int) -> str:
    digest = hashlib.blake2b(digest_size=12)
    _hash_update(digest, [SCORE_VERSION, dataset_fp, teacher_fp, top_k, ignore_index])
    return digest.hexdigest()


def score_dataset(
    teacher: torch.nn.Module | None,
    dataset,
    *,
    cache_dir: str | os.PathLike,
    cache_key: str | None = None,
    top_k: int = 10,
    batch_size: int = 16,
    ignore_index: int = -100,
    shard_size: int | None = None,
    load_teacher=None,
    show_progress: bool = True,
    fused: bool = True,
) -> np.ndarray:
    """
    Scores every sequence of `dataset` with `teacher` (`sequence_scores` on the teacher's next-token logits) and
    returns a float32 array of length `len(dataset)`. With `fused` (and a teacher that qualifies, see
    `salt_hf.losses.head`) the logits are computed from the teacher's last hidden states chunk by chunk and never held
    whole; its first batch checks them against the teacher's own.

    The rows are cut into shards of `shard_size` rows; the processes of the current launch (Accelerate's
    `PartialState`) score the shards round-robin, in batches of `batch_size`, under `torch.no_grad`, and write one
    `.npy` file per shard; the main process then joins them into `scores.npy`. The folder
    `cache_dir/<cache_key>` keys the result by the dataset's and the teacher's fingerprints and the scoring
    parameters: a second run reads it without running the teacher, and an interrupted run recomputes only the shards
    it had not finished. With `teacher=None`, `load_teacher()` is called only if some shard must be computed.
    The folder must be visible to every process (shared storage across nodes).
    """
    state = PartialState()
    if cache_key is None:
        if teacher is None:
            raise ValueError("score_dataset needs a teacher (or a cache_key) to fingerprint the scores.")
        fingerprint = model_fingerprint(teacher)
        cache_key = score_cache_key(dataset_fingerprint(dataset), fingerprint, top_k=top_k, ignore_index=ignore_index)
    folder = Path(cache_dir) / cache_key
    final = folder / "scores.npy"
    n = len(dataset)
    if final.exists():
        scores = np.load(final)
        if scores.shape == (n,):
            if state.is_main_process:
                logger.info(f"SALT_DS: reusing the cached scores of {n} sequences from {folder}")
            return scores
    shard_size = shard_size or max(batch_size, 64 * batch_size)
    shards = [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]
    files = {shard: folder / f"rows-{shard[0]:010d}-{shard[1]:010d}.npy" for shard in shards}
    todo = [shard for shard in shards[state.process_index :: state.num_processes] if not files[shard].exists()]
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    if state.is_main_process:
        cached = sum(files[shard].exists() for shard in shards)
        logger.info(
            f"SALT_DS: scoring {n} sequences in {len(shards)} shards ({cached} already cached) on "
            f"{state.num_processes} process(es), cache {folder}"
        )
    if todo:
        if teacher is None:
            if load_teacher is None:
                raise ValueError("score_dataset needs a teacher or load_teacher to compute missing shards.")
            teacher = load_teacher()
        show = show_progress and state.is_local_main_process
        _score_shards(
            teacher,
            dataset,
            todo,
            files,
            top_k=top_k,
            batch_size=batch_size,
            ignore_index=ignore_index,
            show_progress=show,
            fused=fused,
        )
    state.wait_for_everyone()
    if state.is_main_process:
        _join_shards(folder, [files[shard] for shard in shards], top_k)
    state.wait_for_everyone()
    return np.load(final)


def _join_shards(folder: Path, files: list[Path], top_k: int) -> None:
    """`scores.npy` from the shard files in order, and a `meta.json` beside it; both written atomically."""
    scores = np.concatenate([np.load(file) for file in files]) if files else np.zeros(0, np.float32)
    _atomic_save(folder / "scores.npy", scores)
    meta = {
        "sequences": int(scores.size),
        "top_k": top_k,
        "version": SCORE_VERSION,
        "kept_nan": int(np.isnan(scores).sum()),
    }
    _atomic_write_text(folder / "meta.json", json.dumps(meta, indent=1))


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _BatchScores:
    """
    The scores of a batch: from the teacher's hidden states and output weight, chunk by chunk (issue 15), where the
    teacher's output layer qualifies (`salt_hf.losses.head.output_layer`) and the first batch's check of its logits
    against the teacher's own passes (`Probe`); else from the teacher's logits.
    """

    def __init__(self, teacher: torch.nn.Module, fused: bool, top_k: int, ignore_index: int):
        self.teacher, self.options = teacher, dict(top_k=top_k, ignore_index=ignore_index)
        self.layer, self.checked = None, False
        if fused:
            try:
                self.layer = output_layer(teacher, "teacher")
            except NotFusableError as err:
                logger.info(f"SALT_DS: scoring on the teacher's logits, because {err}")

    def __call__(self, batch: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        if self.layer is not None:
            probe = None if self.checked else Probe("teacher", self.layer, targets.shape)
            hidden, own = teacher_hidden(self.teacher, self.layer, {**batch, "use_cache": False}, probe)
            reason = probe.verdict(own) if probe is not None else None
            self.checked = True
            if reason is None:
                flat, layer = hidden.reshape(-1, hidden.shape[-1]), self.layer
                vocab = layer.module.out_features
                return chunked_sequence_scores(lambda rows: layer.logits(flat[rows]), targets, vocab, **self.options)
            logger.warning(f"SALT_DS: scoring on the teacher's logits, because {reason}")
            self.layer = None
        logits = self.teacher(**batch, use_cache=False).logits
        return sequence_scores(logits, targets, **self.options)


@torch.no_grad()
def _score_shards(teacher, dataset, shards, files, *, top_k, batch_size, ignore_index, show_progress, fused) -> None:
    from tqdm.auto import tqdm

    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    total = sum(stop - start for start, stop in shards)
    bar = tqdm(total=total, desc="SALT_DS scoring", unit="seq", disable=not show_progress)
    scores_of = _BatchScores(teacher, fused, top_k, ignore_index)
    try:
        for start, stop in shards:
            parts = []
            for a in range(start, stop, batch_size):
                b = min(a + batch_size, stop)
                batch = _batch(_rows(dataset, a, b), ignore_index, device)
                labels = batch.pop("labels")
                # position t predicts label t + 1; the last position predicts nothing (no copy of the logits)
                targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=ignore_index)
                parts.append(scores_of(batch, targets))
                bar.update(b - a)
            _atomic_save(files[(start, stop)], torch.cat(parts).cpu().numpy().astype(np.float32))
    finally:
        bar.close()
        teacher.train(was_training)
