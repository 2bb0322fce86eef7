"""
SALT_DS: the small model chooses the sequences of the KD stage (Rawat et al., 2024, https://arxiv.org/abs/2410.18779).

The teacher scores every training sequence by how "challenging yet learnable" it is: the teacher's per-token loss,
kept only on tokens whose label is among its top-k predictions (learnable), summarised by the median (challenging =
high). The KD stage draws its batches from the highest-scoring sequences; from n_KD on training continues on the
whole dataset.

- `scores`: `sequence_scores`, the score of each sequence of a batch, a pure function of logits and labels, and
  `chunked_sequence_scores`, the same from a function that gives the logits of a few positions at a time;
- `cache`: `score_dataset`, an offline pass of the teacher over a dataset, spread over the processes of a launch,
  cached by fingerprint and resumable shard by shard; it scores from the teacher's hidden states where the teacher
  qualifies (`salt_hf.losses.head`), never holding a batch's logits;
- `sampler`: `select_sequences` and `KDSelectionSampler`, which sequences the KD stage uses and the order in which a
  run sees its samples (a function of the sample position, hence of the global step: identical on every process
  and exact under `resume_from_checkpoint`);
- `select_kd_data` (here): the three strung together for `SALTTrainer`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger

from .cache import (
    dataset_fingerprint,
    default_score_cache_dir,
    model_fingerprint,
    path_fingerprint,
    score_cache_key,
    score_dataset,
    subset_for_scoring,
)
from .sampler import KDSelectionSampler, describe_selection, select_sequences
from .scores import chunked_sequence_scores, sequence_scores

logger = get_logger(__name__)


@dataclass
class KDSelection:
    """The outcome of SALT_DS: a score per dataset row (NaN where unscored), the selected rows and a summary."""

    scores: np.ndarray
    selected: np.ndarray
    summary: dict
    cache: str

    def sampler(self, dataset_size: int, *, kd_steps: int, max_steps: int, global_batch: int, seed: int):
        """
        The run's sample order: one "epoch" holding the whole run, the KD stage's n_KD global batches from the
        selected sequences, then permutations of the whole dataset (Accelerate hands each process its share).
        """
        return KDSelectionSampler(
            self.selected,
            dataset_size,
            kd_samples=kd_steps * global_batch,
            total_samples=max_steps * global_batch,
            seed=seed,
        )


def select_kd_data(dataset, teacher, args, kd_steps: int, load_teacher: Callable) -> KDSelection | None:
    """
    Scores `dataset` with the `Teacher` (or reads the cached scores) and selects the KD stage's sequences by the
    run's `SALTConfig` (`kd_select_*` fields); `load_teacher()` returns the placed teacher module, called only when
    some shard must be computed. None when there is nothing to select for (no teacher, or n_KD = 0).
    Runs on every process: scoring is spread over them.
    """
    if teacher is None or teacher.released:
        logger.warning(
            "kd_data_selection=True without a teacher or with kd_weight=0: no selection.", main_process_only=True
        )
        return None
    if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            "kd_data_selection=True needs a training dataset with a length (a map-style dataset, not a streamed "
            "one): the teacher scores every sequence before training."
        )
    if kd_steps == 0:
        return None
    cache_dir = args.kd_select_cache_dir or default_score_cache_dir()
    seed = args.data_seed if args.data_seed is not None else args.seed
    to_score, pool, rows_fingerprint = subset_for_scoring(dataset, args.kd_select_max_sequences, seed)
    key = score_cache_key(rows_fingerprint, teacher.fingerprint(), top_k=args.kd_select_top_k, ignore_index=-100)
    scores = score_dataset(
        None,
        to_score,
        cache_dir=cache_dir,
        cache_key=key,
        top_k=args.kd_select_top_k,
        batch_size=args.kd_select_batch_size or args.per_device_eval_batch_size,
        load_teacher=load_teacher,
        show_progress=not args.disable_tqdm,
        fused=args.loss_implementation != "logits",
    )
    # the fraction (and the band) apply to the scored sequences
    selected = select_sequences(scores, fraction=args.kd_select_fraction, drop_top=args.kd_select_drop_top, seed=seed)
    if pool is not None:  # back to dataset indices; unscored sequences get NaN
        selected = pool[selected]
        full = np.full(len(dataset), np.nan, dtype=np.float32)
        full[pool] = scores
        scores = full
    summary = describe_selection(scores, selected)
    logger.info(f"SALT_DS selection: {summary}", main_process_only=True)
    return KDSelection(scores=scores, selected=selected, summary=summary, cache=str(Path(cache_dir) / key))


__all__ = [
    "KDSelection",
    "KDSelectionSampler",
    "chunked_sequence_scores",
    "dataset_fingerprint",
    "default_score_cache_dir",
    "describe_selection",
    "model_fingerprint",
    "path_fingerprint",
    "score_cache_key",
    "score_dataset",
    "select_kd_data",
    "select_sequences",
    "sequence_scores",
    "subset_for_scoring",
]
