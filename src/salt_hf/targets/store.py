"""The store of teacher targets on disk: shards of rows plus a manifest of what they were made from.

    <store>/manifest.json                   written last, atomically: a store without it is incomplete and never read
    <store>/rows-0000000000-0000001024.safetensors   one shard: rows [start, stop) of the packed training set

Each shard holds, for its rows (R) of L positions and K slots: `ids` [R, L, K] (int16 when the vocabulary fits, else
int32), `values` [R, L, K] (uint8 counts for "sampled", fp32 log-probabilities for "topk"), `teacher_nll` [R, L] and
`offset` [R, L] (fp32; see `salt_hf.targets.draw.RowTargets`). A shard appears under its final name only once written
whole (a temporary file, then `os.replace`), so a killed precompute leaves complete shards and temporary files only;
the manifest records every shard's size and SHA-256, which `TargetStore.open` checks, so a cut or corrupt shard is
refused before training.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .draw import FORMS, weights_of

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class StoreError(ValueError):
    """A store that cannot serve this run; the message names the mismatch and the fix."""


def shard_name(start: int, stop: int) -> str:
    return f"rows-{start:010d}-{stop:010d}.safetensors"


def shard_ranges(rows: int, rows_per_shard: int) -> list[tuple[int, int]]:
    return [(start, min(start + rows_per_shard, rows)) for start in range(0, rows, rows_per_shard)]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def rows_fingerprint(dataset, rows: int, block: int = 4096) -> str:
    """
    A content hash of the first `rows` packed rows: their token ids and, where the dataset has them, labels,
    attention masks and position ids. Equal for the same rows in the same order, whatever wraps the dataset.
    """
    digest = hashlib.sha256()
    columns = getattr(dataset, "column_names", None)
    keys = [k for k in ("input_ids", "labels", "attention_mask", "position_ids") if columns is None or k in columns]
    for start in range(0, rows, block):
        stop = min(start + block, rows)
        if columns is not None:  # a datasets.Dataset: one read per block
            part = dataset.select_columns(keys).with_format("numpy")[start:stop]
            blocks = {k: np.asarray(part[k]) for k in keys}
        else:
            items = [dataset[i] for i in range(start, stop)]
            blocks = {k: np.asarray([np.asarray(it[k]) for it in items]) for k in keys if k in items[0]}
        for key in sorted(blocks):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(blocks[key], dtype=np.int64).tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str | None:
    """A hash of the tokenizer's vocabulary (token -> id), or None without a tokenizer."""
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return None
    text = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Manifest:
    """What a store was made from and what it holds (`manifest.json`)."""

    form: str
    k: int
    temperature: float
    seed: int
    vocab_size: int
    seq_length: int
    rows: int  # rows covered: [0, rows) of the packed training set
    dataset_rows: int
    rows_per_shard: int
    data_fingerprint: str
    tokenizer_fingerprint: str | None
    teacher_fingerprint: str
    teacher: str
    dtype: str
    shards: list[dict] = field(default_factory=list)  # {"file", "start", "stop", "bytes", "sha256"}
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not path.is_file():
            raise StoreError(
                f"teacher_targets {folder}: no {MANIFEST}, so not a complete store (an unfinished precompute?): run "
                "the same salt-teacher-targets command again to finish it."
            )
        try:
            values = json.loads(path.read_text())
            manifest = cls(**values)
        except (ValueError, TypeError) as err:
            raise StoreError(f"teacher_targets {folder}: {MANIFEST} is not a store manifest ({err}).") from err
        if manifest.format_version != FORMAT_VERSION or manifest.form not in FORMS:
            raise StoreError(
                f"teacher_targets {folder}: format {manifest.format_version} / form {manifest.form!r} is not one this "
                f"salt_hf reads (format {FORMAT_VERSION}, forms {FORMS}): make the store again."
            )
        return manifest


def write_shard(folder: Path, start: int, tensors: dict[str, torch.Tensor]) -> Path:
    """Writes one shard atomically (a temporary file, then its final name); returns its path."""
    from safetensors.torch import save_file

    stop = start + tensors["ids"].shape[0]
    final = folder / shard_name(start, stop)
    tmp = folder / f".{final.name}.{os.getpid()}.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    return final


class TargetStore:
    """
    A complete store, opened for reading rows by their index in the packed training set.

    Args:
        folder (`str` or `os.PathLike`): the store.
        verify (`bool`, *optional*, defaults to `True`): check every shard's size and SHA-256 against the manifest.
    """

    def __init__(self, folder: str | os.PathLike, verify: bool = True):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise StoreError(f"teacher_targets {self.folder}: no such folder. Make it with salt-teacher-targets.")
        self.manifest = Manifest.read(self.folder)
        self._handles: dict[int, object] = {}
        if verify:
            self.verify()

    def verify(self) -> None:
        """Raises `StoreError` naming the first shard that is missing, cut or corrupt."""
        m = self.manifest
        expected = shard_ranges(m.rows, m.rows_per_shard)
        if [(s["start"], s["stop"]) for s in m.shards] != expected:
            raise StoreError(f"teacher_targets {self.folder}: the manifest's shards do not cover rows [0, {m.rows}).")
        for shard in m.shards:
            path = self.folder / shard["file"]
            if not path.is_file():
                raise StoreError(f"teacher_targets {self.folder}: shard {shard['file']} is missing.")
            size = path.stat().st_size
            if size != shard["bytes"]:
                raise StoreError(
                    f"teacher_targets {self.folder}: shard {shard['file']} has {size} bytes, the manifest says "
                    f"{shard['bytes']} (cut or replaced): make the store again."
                )
            if file_sha256(path) != shard["sha256"]:
                raise StoreError(
                    f"teacher_targets {self.folder}: shard {shard['file']} does not match its SHA-256 in the manifest "
                    "(corrupt): make the store again."
                )

    def _shard(self, index: int):
        if index not in self._handles:
            from safetensors import safe_open

            self._handles[index] = safe_open(str(self.folder / self.manifest.shards[index]["file"]), framework="pt")
        return self._handles[index]

    def read(self, row_ids: torch.Tensor | list[int]) -> dict[str, torch.Tensor]:
        """The stored tensors of the given rows, stacked: ids [B, L, K] int64, values [B, L, K], teacher_nll and
        offset [B, L]. Raises `StoreError` for a row the store does not cover."""
        m = self.manifest
        out: dict[str, list[torch.Tensor]] = {"ids": [], "values": [], "teacher_nll": [], "offset": []}
        for row in [int(r) for r in row_ids]:
            if not 0 <= row < m.rows:
                raise StoreError(
                    f"teacher_targets {self.folder} covers rows [0, {m.rows}) of the training set, but the run asks "
                    f"for row {row}: make the store with more rows."
                )
            index = row // m.rows_per_shard
            local = row - m.shards[index]["start"]
            handle = self._shard(index)
            for key in out:
                out[key].append(handle.get_slice(key)[local : local + 1])
        tensors = {key: torch.cat(parts) for key, parts in out.items()}
        tensors["ids"] = tensors["ids"].long()
        return tensors

    def sparse_targets(self, row_ids, device=None):
        """The rows' targets as the loss takes them (`salt_hf.losses.SparseTargets`, [B * L] rows)."""
        from ..losses import SparseTargets

        t = self.read(row_ids)
        k = t["ids"].shape[-1]
        return SparseTargets(
            t["ids"].reshape(-1, k),
            weights_of(self.manifest.form, t["values"]).reshape(-1, k),
            t["teacher_nll"].reshape(-1).float(),
            t["offset"].reshape(-1).float(),
        ).to(device if device is not None else "cpu")

    def close(self) -> None:
        """Drops the open shard files; a later read opens them again."""
        self._handles.clear()

    def bytes_per_token(self) -> float:
        m = self.manifest
        return sum(s["bytes"] for s in m.shards) / max(1, m.rows * m.seq_length)
