"""SALT_DS selection: which sequences the KD stage trains on, and the order in which a run sees its samples."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


def select_sequences(
    scores: np.ndarray | Sequence[float], *, fraction: float, drop_top: float = 0.0, seed: int = 0
) -> np.ndarray:
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
    function of the seed and `kd_samples` alone, so skipping the first batches on resume reproduces it.

    The stream is drawn lazily: `end_kd_stage` can still move the switch earlier while iterating (`kd_steps="auto"`),
    to the first position not yet drawn at the latest.
    """

    def __init__(
        self, selected: Sequence[int] | np.ndarray, dataset_size: int, kd_samples: int, total_samples: int, seed=0
    ):
        if len(selected) == 0:
            raise ValueError("KDSelectionSampler needs at least one selected sequence.")
        if not 0 <= kd_samples <= total_samples:
            raise ValueError(f"kd_samples={kd_samples} must be in [0, total_samples={total_samples}].")
        self.selected = torch.as_tensor(np.asarray(selected), dtype=torch.long)
        self.dataset_size = dataset_size
        self.kd_samples = kd_samples
        self.total_samples = total_samples
        self.seed = seed
        self.drawn = 0  # positions handed out by the current iteration

    def __len__(self) -> int:
        return self.total_samples

    def end_kd_stage(self, position: int) -> int:
        """Moves the switch to `position` or, if later, the first position not yet drawn; never later than it was.
        Returns the switch's new position."""
        self.kd_samples = min(self.kd_samples, max(position, self.drawn))
        return self.kd_samples

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
        self.drawn = 0
        for index in self._passes(self.selected, self.seed, self.kd_samples):
            if self.drawn >= self.kd_samples:  # the switch moved earlier while iterating
                break
            self.drawn += 1
            yield index
        for index in self._passes(self.dataset_size, self.seed + 1, self.total_samples - self.drawn):
            self.drawn += 1
            yield index


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
