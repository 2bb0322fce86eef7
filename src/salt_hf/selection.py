"""
SALT_DS: the small model chooses the sequences of the KD stage (Rawat et al., 2024, section on data selection).

The teacher scores every training sequence by how "challenging yet learnable" it is: the teacher's per-token loss,
kept only on tokens whose label is among its top-k predictions (learnable), summarised by the median (challenging =
high). The KD stage draws its batches from the highest-scoring sequences; from n_KD on training continues on the
whole dataset.

Three parts, usable on their own:
- `sequence_scores`: the score of each sequence of a batch, a pure function of logits and labels;
- `score_dataset`: an offline pass of the teacher over a dataset, spread over the processes of a launch, cached by
  fingerprint and resumable shard by shard;
- `select_sequences` and `KDSelectionSampler`: which sequences the KD stage uses, and the order in which a run sees
  its samples (a function of the sample position, hence of the global step: identical on every process and exact
  under `resume_from_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

# Bump when the score's definition or the cache layout changes: old caches are then never reused.
SCORE_VERSION = 1
# Elements per chunk of `sequence_scores` (tokens x vocab): bounds its memory for large vocabularies.
# On CPU 8 MiB of fp32, so that a chunk's passes run from cache; on accelerators 256 MiB, so that kernels stay few.
_CHUNK_ELEMENTS = {"cpu": 1 << 21, "other": 1 << 26}


def sequence_scores(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    top_k: int = 10,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """
    One SALT_DS score per sequence: the median of the teacher's per-token NLL of the label over the tokens whose label
    is among the teacher's `top_k` predictions.

    Args:
        teacher_logits (`torch.Tensor` of shape `(batch, seq, vocab)`):
            Teacher logits, aligned with `labels`: position t predicts `labels[:, t]` (shift before calling).
        labels (`torch.Tensor` of shape `(batch, seq)`):
            Target token ids; `ignore_index` marks unsupervised positions.
        top_k (`int`):
            A label is "learnable" when fewer than `top_k` vocabulary entries have a strictly larger logit.
        chunk_size (`int`, *optional*):
            Tokens per chunk; the extra memory is a few fp32 `(chunk, vocab)` temporaries, not `(batch, seq, vocab)`.

    Returns:
        `torch.Tensor` of shape `(batch,)`, float32: the median of the kept losses (the mean of the two middle values
        for an even count), NaN for a sequence with no kept token.
    """
    if teacher_logits.dim() != 3 or labels.shape != teacher_logits.shape[:2]:
        raise ValueError(
            f"teacher_logits {tuple(teacher_logits.shape)} and labels {tuple(labels.shape)} must be (batch, seq, "
            "vocab) and (batch, seq), aligned position by position."
        )
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1.")
    batch, seq, vocab = teacher_logits.shape
    logits = teacher_logits.reshape(batch * seq, vocab)
    flat_labels = labels.reshape(-1)
    supervised = flat_labels != ignore_index
    if bool((((flat_labels < 0) | (flat_labels >= vocab)) & supervised).any()):  # the one host sync
        raise ValueError(f"labels must be in [0, {vocab}) or ignore_index={ignore_index}.")
    safe_labels = torch.where(supervised, flat_labels, torch.zeros_like(flat_labels))
    elements = _CHUNK_ELEMENTS["cpu" if teacher_logits.device.type == "cpu" else "other"]
    chunk = chunk_size or max(1, elements // vocab)
    kept = torch.empty(batch * seq, dtype=torch.float32, device=logits.device)
    nan = torch.tensor(float("nan"), dtype=torch.float32, device=logits.device)
    for start in range(0, batch * seq, chunk):
        stop = min(start + chunk, batch * seq)
        part = logits[start:stop].float()  # a view for fp32 logits, a (chunk, vocab) copy otherwise
        target = part.gather(1, safe_labels[start:stop, None])
        nll = torch.logsumexp(part, dim=-1) - target.squeeze(1)
        keep = supervised[start:stop]
        if top_k < vocab:
            # fewer than top_k logits strictly above the label's <=> the k-th largest logit is <= the label's
            kth = torch.topk(part, top_k, dim=-1, sorted=False).values.amin(dim=-1)
            keep = keep & (target.squeeze(1) >= kth)
        kept[start:stop] = torch.where(keep, nll, nan)
    # nanquantile(0.5) interpolates linearly: the mean of the two middle values for an even count, NaN if none kept
    return torch.nanquantile(kept.view(batch, seq), 0.5, dim=1)


def select_sequences(scores: np.ndarray | Sequence[float], *, fraction: float, drop_top: float = 0.0,
                     seed: int = 0) -> np.ndarray:  # fmt: skip
    """
    The indices (ascending) of the sequences the KD stage trains on: those ranked `[drop_top * N, (drop_top +
    fraction) * N)` by descending score, N the number of sequences. Sequences scored NaN (no learnable token) are
    never selected. Ties are broken by a permutation drawn from `seed`, so the selection is deterministic.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"kd_select_fraction={fraction} must be in (0, 1].")
    if not 0.0 <= drop_top < 1.0 or fraction + drop_top > 1.0:
        raise ValueError(f"kd_select_drop_top={drop_top} must be in [0, 1) with fraction + drop_top <= 1.")
    order = np.random.default_rng(seed).permutation(n)
    order = order[np.isfinite(scores[order])]
    order = order[np.argsort(-scores[order], kind="stable")]  # descending; ties keep the seeded order
    skip, keep = round(drop_top * n), max(1, round(fraction * n))
    chosen = order[skip : skip + keep]
    if chosen.size == 0:
        raise ValueError(
            f"SALT_DS selected no sequence: {int(np.isfinite(scores).sum())} of {n} have a learnable token and "
            f"kd_select_drop_top={drop_top} skips {skip}. Lower kd_select_drop_top or raise kd_select_top_k."
        )
    if chosen.size < keep:
        logger.warning(
            f"SALT_DS: only {chosen.size} sequences are eligible, fewer than the {keep} asked for "
            f"(kd_select_fraction={fraction}); the KD stage repeats them."
        )
    return np.sort(chosen)


class KDSelectionSampler(Sampler[int]):
    """
    The sample order of a SALT_DS run: `kd_samples` indices drawn from `selected` (a fresh seeded permutation on each
    pass, repeating as often as the KD stage needs), then permutations of the whole dataset (one per pass, seeded)
    until `total_samples`. Position p of the stream belongs to optimizer step p // (global batch size), so with
    `kd_samples = n_KD * global batch` the switch happens exactly at step n_KD on every process; the stream is a
    function of the seed alone, so skipping the first batches on resume reproduces it.
    """

    def __init__(self, selected: Sequence[int] | np.ndarray, dataset_size: int, kd_samples: int, total_samples: int,
                 seed: int = 0):  # fmt: skip
        if len(selected) == 0:
            raise ValueError("KDSelectionSampler needs at least one selected sequence.")
        if not 0 <= kd_samples <= total_samples:
            raise ValueError(f"kd_samples={kd_samples} must be in [0, total_samples={total_samples}].")
        self.selected = torch.as_tensor(np.asarray(selected), dtype=torch.long)
        self.dataset_size, self.kd_samples, self.total_samples, self.seed = (
            dataset_size,
            kd_samples,
            total_samples,
            seed,
        )

    def __len__(self) -> int:
        return self.total_samples

    @staticmethod
    def _passes(pool: torch.Tensor | int, seed: int, count: int) -> Iterator[int]:
        generator = torch.Generator().manual_seed(seed)
        size = pool if isinstance(pool, int) else pool.numel()
        while count > 0:
            perm = torch.randperm(size, generator=generator)
            block = (perm if isinstance(pool, int) else pool[perm])[:count]
            count -= block.numel()
            yield from block.tolist()

    def __iter__(self) -> Iterator[int]:
        yield from self._passes(self.selected, self.seed, self.kd_samples)
        yield from self._passes(self.dataset_size, self.seed + 1, self.total_samples - self.kd_samples)


# ---- the offline scoring pass ----


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


class IndexedView(torch.utils.data.Dataset):
    """Rows `indices` of a map-style dataset, in that order (for datasets that have no `select`)."""

    def __init__(self, dataset, indices: Sequence[int] | np.ndarray):
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i: int):
        return self.dataset[int(self.indices[i])]


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
    return (rows if rows is not None else IndexedView(dataset, pool)), pool, f"{fingerprint}-pool-{digest}"


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
) -> np.ndarray:
    """
    Scores every sequence of `dataset` with `teacher` (`sequence_scores` on the teacher's next-token logits) and
    returns a float32 array of length `len(dataset)`.

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
        cache_key = score_cache_key(dataset_fingerprint(dataset), model_fingerprint(teacher), top_k=top_k,
                                    ignore_index=ignore_index)  # fmt: skip
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
    mine = shards[state.process_index :: state.num_processes]
    todo = [shard for shard in mine if not files[shard].exists()]
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    cached = sum(files[shard].exists() for shard in shards)
    if state.is_main_process:
        logger.info(
            f"SALT_DS: scoring {n} sequences in {len(shards)} shards ({cached} already cached) on "
            f"{state.num_processes} process(es), cache {folder}"
        )
    if todo:
        if teacher is None:
            if load_teacher is None:
                raise ValueError("score_dataset needs a teacher or load_teacher to compute missing shards.")
            teacher = load_teacher()
        _score_shards(teacher, dataset, todo, files, top_k=top_k, batch_size=batch_size, ignore_index=ignore_index,
                      show_progress=show_progress and state.is_local_main_process)  # fmt: skip
    state.wait_for_everyone()
    if state.is_main_process:
        scores = np.concatenate([np.load(files[shard]) for shard in shards]) if shards else np.zeros(0, np.float32)
        _atomic_save(final, scores)
        (folder / "meta.json").write_text(json.dumps({"sequences": n, "top_k": top_k, "version": SCORE_VERSION,
                                                      "kept_nan": int(np.isnan(scores).sum())}, indent=1))  # fmt: skip
    state.wait_for_everyone()
    return np.load(final)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    os.replace(tmp, path)


@torch.no_grad()
def _score_shards(teacher, dataset, shards, files, *, top_k, batch_size, ignore_index, show_progress) -> None:
    from tqdm.auto import tqdm

    was_training = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    total = sum(stop - start for start, stop in shards)
    bar = tqdm(total=total, desc="SALT_DS scoring", unit="seq", disable=not show_progress)
    try:
        for start, stop in shards:
            parts = []
            for a in range(start, stop, batch_size):
                b = min(a + batch_size, stop)
                batch = _batch(_rows(dataset, a, b), ignore_index, device)
                labels = batch.pop("labels")
                logits = teacher(**batch, use_cache=False).logits
                # position t predicts label t + 1; the last position predicts nothing (no copy of the logits)
                targets = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=ignore_index)
                parts.append(sequence_scores(logits, targets, top_k=top_k, ignore_index=ignore_index))
                del logits
                bar.update(b - a)
            _atomic_save(files[(start, stop)], torch.cat(parts).cpu().numpy().astype(np.float32))
    finally:
        bar.close()
        teacher.train(was_training)


def describe_selection(scores: np.ndarray, selected: np.ndarray) -> dict[str, float]:
    """Summary numbers for the logs: how many were scored, eligible and selected, and the selected score range."""
    finite = np.isfinite(scores)
    picked = scores[selected]
    return {
        "sequences": int(scores.size),
        "eligible": int(finite.sum()),
        "selected": int(selected.size),
        "score_min_selected": float(picked.min()) if picked.size else math.nan,
        "score_max_selected": float(picked.max()) if picked.size else math.nan,
        "score_median_all": float(np.nanmedian(scores)) if finite.any() else math.nan,
    }
