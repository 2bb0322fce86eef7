"""The precompute: the teacher run once over the packed training rows, its targets written as a store.

`write_store` is the core of `salt-teacher-targets`. The rows are cut into shards; the processes of the launch
(Accelerate's `PartialState`) take the shards round-robin, run the teacher on them in batches without a graph, and
write each shard atomically; the main process then writes the manifest. A killed run leaves whole shards only: the
same command computes the missing ones and finishes. A folder holding another store, or the start of one made with
other settings, is refused before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.logging import get_logger

from .draw import FORMS, row_targets, row_uniforms
from .store import (
    MANIFEST,
    Manifest,
    StoreError,
    file_sha256,
    rows_fingerprint,
    shard_name,
    shard_ranges,
    tokenizer_fingerprint,
    write_shard,
)

logger = get_logger(__name__)

PENDING = "pending.json"  # the manifest-to-be, written before the first shard: a resumed run must match it
POSITIONS_PER_CHUNK = 256  # positions whose [chunk, V] logits are formed at a time


def next_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The label of every position (token t + 1), -100 where there is none: the student's shifted labels."""
    labels = batch.get("labels", batch["input_ids"])
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=-100)


def teacher_rows(teacher: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, object]:
    """
    The teacher's last hidden states [B, L, H] and its output layer (`salt_hf.losses.head.OutputLayer`), so that the
    logits are formed a chunk of positions at a time; the teacher's logits and None for a model whose output layer
    the fused path does not know.
    """
    from ..losses.head import NotFusableError, output_layer, teacher_hidden

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    try:
        layer = output_layer(teacher, "teacher")
    except NotFusableError:
        with torch.no_grad():
            return teacher(**inputs, use_cache=False).logits, None
    hidden, _ = teacher_hidden(teacher, layer, {**inputs, "use_cache": False})
    return hidden, layer


def row_block(teacher, batch, rows: list[int], m: Manifest) -> dict[str, torch.Tensor]:
    """The targets of a batch of rows (`rows`: their indices), as the shard's tensors."""
    states, layer = teacher_rows(teacher, batch)
    labels = next_tokens(batch).cpu()
    out: dict[str, list] = {"ids": [], "values": [], "teacher_nll": [], "offset": []}
    for b, row in enumerate(rows):
        length = labels.shape[1]
        uniforms = row_uniforms(m.seed, row, length, m.k) if m.form == "sampled" else None
        parts = []
        for start in range(0, length, POSITIONS_PER_CHUNK):
            sl = slice(start, min(start + POSITIONS_PER_CHUNK, length))
            logits = states[b, sl] if layer is None else layer.logits(states[b, sl])
            parts.append(
                row_targets(
                    logits[:, : m.vocab_size].float(),
                    labels[b, sl].to(logits.device),
                    form=m.form,
                    k=m.k,
                    temperature=m.temperature,
                    uniforms=None if uniforms is None else uniforms[sl],
                )
            )
        for i, key in enumerate(out):
            out[key].append(torch.cat([p[i] for p in parts]).cpu())
    block = {key: torch.stack(parts) for key, parts in out.items()}
    block["ids"] = block["ids"].to(torch.int16 if m.vocab_size <= 2**15 else torch.int32)
    return block


def _rows(dataset, start: int, stop: int, collate) -> dict[str, torch.Tensor]:
    return collate([dataset[i] for i in range(start, stop)])


def _check_folder(folder: Path, m: Manifest) -> Manifest | None:
    """The finished store's manifest when `folder` holds this very store already; raises for any other content."""
    want = {k: v for k, v in asdict(m).items() if k != "shards"}
    if (folder / MANIFEST).is_file():
        have = Manifest.read(folder)
        if {k: v for k, v in asdict(have).items() if k != "shards"} == want:
            return have
        diff = sorted(k for k in want if asdict(have)[k] != want[k])
        raise StoreError(
            f"{folder} already holds a store made with other settings ({', '.join(diff)} differ); nothing was "
            "changed. Choose another folder for this store."
        )
    pending = folder / PENDING
    if pending.is_file():
        have = json.loads(pending.read_text())
        if have != want:
            diff = sorted(k for k in want if have.get(k) != want[k])
            raise StoreError(
                f"{folder} holds the start of a store made with other settings ({', '.join(diff)} differ); nothing "
                "was changed. Run the command that started it again, or choose another folder."
            )
    elif folder.is_dir() and any(folder.iterdir()):
        raise StoreError(f"{folder} already holds other files; nothing was changed. Choose an empty or new folder.")
    return None


def write_store(
    teacher: torch.nn.Module,
    dataset,
    folder: str | Path,
    manifest: Manifest,
    *,
    batch_size: int = 8,
    collate=None,
    device=None,
) -> Manifest:
    """
    Runs `teacher` over rows [0, manifest.rows) of `dataset` and writes the store into `folder` (every process of the
    launch takes part); returns the finished manifest. `manifest` carries the settings and fingerprints (its `shards`
    are filled here). Resumes an interrupted store; refuses a folder holding anything else.
    """
    from transformers import default_data_collator

    state = PartialState()
    folder = Path(folder)
    if manifest.form not in FORMS:
        raise StoreError(f"form={manifest.form!r} must be one of {FORMS}.")
    done = _check_folder(folder, manifest)
    if done is not None:
        logger.info(f"{folder} already holds this store: nothing to do.", main_process_only=True)
        return done
    state.wait_for_everyone()  # every process has checked the folder before the main process writes into it
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        pending = {k: v for k, v in asdict(manifest).items() if k != "shards"}
        (folder / PENDING).write_text(json.dumps(pending, indent=1, sort_keys=True) + "\n")
    state.wait_for_everyone()
    collate = collate or default_data_collator
    device = device or state.device
    shards = shard_ranges(manifest.rows, manifest.rows_per_shard)
    mine = [s for s in shards[state.process_index :: state.num_processes] if not (folder / shard_name(*s)).is_file()]
    teacher.eval()
    for start, stop in mine:
        blocks = []
        for b in range(start, stop, batch_size):
            rows = list(range(b, min(b + batch_size, stop)))
            batch = {k: v.to(device) for k, v in _rows(dataset, rows[0], rows[-1] + 1, collate).items()}
            with torch.no_grad():
                blocks.append(row_block(teacher, batch, rows, manifest))
        write_shard(folder, start, {k: torch.cat([blk[k] for blk in blocks]) for k in blocks[0]})
        logger.info(f"teacher targets: rows [{start}, {stop}) written", main_process_only=False)
    state.wait_for_everyone()
    if state.is_main_process:
        entries = []
        for start, stop in shards:
            path = folder / shard_name(start, stop)
            entries.append(
                {
                    "file": path.name,
                    "start": start,
                    "stop": stop,
                    "bytes": path.stat().st_size,
                    "sha256": file_sha256(path),
                }
            )
        final = replace(manifest, shards=entries)
        tmp = folder / f".{MANIFEST}.tmp"
        tmp.write_text(final.to_json())
        tmp.replace(folder / MANIFEST)
        (folder / PENDING).unlink()
    state.wait_for_everyone()
    return Manifest.read(folder)


def store_targets(
    teacher: torch.nn.Module | str,
    dataset,
    folder: str | Path,
    *,
    form: str = "sampled",
    k: int = 16,
    temperature: float = 1.0,
    seed: int = 0,
    tokenizer=None,
    vocab_size: int | None = None,
    rows_per_shard: int = 1024,
    batch_size: int = 8,
    teacher_fingerprint: str | None = None,
    device=None,
) -> Manifest:
    """
    Runs the teacher once over every row of `dataset` (packed rows: `input_ids`, optionally `labels`) and writes the
    store of its targets into `folder`, for `SALTConfig(teacher_targets=folder)`; the Python side of
    `salt-teacher-targets`. Resumes an interrupted store; refuses a folder holding anything else.

    Args:
        teacher (`torch.nn.Module` or `str`): the teacher, or its `save_pretrained` folder (then loaded here).
        dataset: the training set exactly as the student's run will get it (same rows, same order).
        folder (`str` or `os.PathLike`): where the store goes.
        form (`str`, *optional*, defaults to `"sampled"`): `"sampled"` (K draws with counts: unbiased) or `"topk"`.
        k (`int`, *optional*, defaults to `16`): draws per token (at most 255) or ids kept.
        temperature (`float`, *optional*, defaults to `1.0`): the run's `kd_temperature`.
        seed (`int`, *optional*, defaults to `0`): seed of the draws.
        tokenizer (*optional*): the run's tokenizer, recorded so that a run with another one is refused; its length
            is the vocabulary stored (else `vocab_size`, else the teacher's output size).
        teacher_fingerprint (`str`, *optional*): defaults to a hash of the teacher's folder (given by path) or of its
            weights; a run that names the teacher by its folder compares it with the folder's hash.
    """
    from transformers import AutoModelForCausalLM

    from ..selection.cache import model_fingerprint, path_fingerprint
    from ..teacher import output_vocab_size

    name = teacher if isinstance(teacher, str) else getattr(teacher, "name_or_path", "") or type(teacher).__name__
    if isinstance(teacher, str):
        teacher_fingerprint = teacher_fingerprint or path_fingerprint(teacher)
        teacher = AutoModelForCausalLM.from_pretrained(teacher)
    teacher_fingerprint = teacher_fingerprint or model_fingerprint(teacher)
    vocab = len(tokenizer) if tokenizer is not None else vocab_size or output_vocab_size(teacher)
    manifest = Manifest(
        form=form,
        k=min(k, vocab) if form == "topk" else k,
        temperature=float(temperature),
        seed=seed,
        vocab_size=vocab,
        seq_length=len(dataset[0]["input_ids"]),
        rows=len(dataset),
        dataset_rows=len(dataset),
        rows_per_shard=rows_per_shard,
        data_fingerprint=rows_fingerprint(dataset, len(dataset)),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        teacher_fingerprint=teacher_fingerprint,
        teacher=str(name),
        dtype=str(next(teacher.parameters()).dtype).removeprefix("torch."),
    )
    return write_store(teacher, dataset, folder, manifest, batch_size=batch_size, device=device)
