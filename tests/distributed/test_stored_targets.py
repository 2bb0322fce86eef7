"""
Stored teacher targets across real processes (torchrun, gloo, CPU): one optimizer step reading a store is the same for
every split of the 4 sequences into processes x per-device batch x accumulation, under DDP and DeepSpeed ZeRO-2/3,
each process reading only its own rows; and the precompute writes the same store on 2 processes as on 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from common import check, step_dataset, student_model, teacher_model, torchrun, worker_threads
from fixtures import flat_params, one_sgd_step_config
from test_one_step import TOL, run_worker

from salt_hf import SALTTrainer
from salt_hf.targets import Manifest, TargetStore, rows_fingerprint, write_store

pytestmark = pytest.mark.distributed
pytest.importorskip("deepspeed")

TARGETS_WORKER = Path(__file__).with_name("targets_worker.py")
CASES = ["2x2:replicate:logits:stored", "2x1x2:replicate:fused_linear:stored"]


def manifest(ds, rows_per_shard: int) -> Manifest:
    return Manifest(
        form="sampled",
        k=8,
        temperature=1.0,
        seed=0,
        vocab_size=96,
        seq_length=len(ds[0]["input_ids"]),
        rows=len(ds),
        dataset_rows=len(ds),
        rows_per_shard=rows_per_shard,
        data_fingerprint=rows_fingerprint(ds, len(ds)),
        tokenizer_fingerprint=None,
        teacher_fingerprint="teacher_model()",
        teacher="teacher_model()",
        dtype="float32",
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("store") / "targets"
    ds = step_dataset()
    write_store(teacher_model(), ds, path, manifest(ds, rows_per_shard=2), batch_size=2, device="cpu")
    return str(path)


@pytest.fixture(scope="module")
def stored_reference(store, tmp_path_factory) -> torch.Tensor:
    """One process x 4 sequences reading the store, no distributed wrapper, with the workers' thread count."""
    out = tmp_path_factory.mktemp("reference")
    args = one_sgd_step_config(str(out), batch=4, accum=1, use_cpu=True, loss_implementation="logits")
    args.teacher_targets = store
    with worker_threads():
        trainer = SALTTrainer(model=student_model(), args=args, train_dataset=step_dataset())
        trainer.train()
    assert (flat_params(trainer.model) - flat_params(student_model())).abs().max() > 1e-3
    return flat_params(trainer.model)


@pytest.mark.parametrize("backend", ["ddp", "zero2", "zero3"])
def test_one_step_with_stored_targets_equals_single_process(backend, store, stored_reference, tmp_path):
    teacher_dir = tmp_path / "teacher"  # named for the worker's interface; stored cases never load it
    teacher_model().save_pretrained(teacher_dir)
    results = run_worker(backend, CASES, str(teacher_dir), tmp_path, extra=["--targets", store])
    for case in CASES:
        result = results[case]
        assert result["num_processes"] == 2 and result["deepspeed"] == (backend != "ddp"), result
        assert all(rank == {"released": True} for rank in result["ranks"]), result["ranks"]  # no teacher was placed
        diff = (result["weights"] - stored_reference).abs().max().item()
        print(f"{backend} {case}: max |diff| = {diff:.3g}")
        assert diff <= TOL[backend], (case, diff)


def test_precompute_on_two_processes_writes_the_same_store(tmp_path):
    ds = step_dataset(8)
    settings = tmp_path / "manifest.json"
    settings.write_text(json.dumps(asdict(manifest(ds, rows_per_shard=3))))
    proc, seconds = torchrun(TARGETS_WORKER, ["--manifest", str(settings), "--out", str(tmp_path / "two")])
    check(proc)
    print(f"precompute on 2 processes: {seconds:.1f} s")
    write_store(teacher_model(), ds, tmp_path / "one", manifest(ds, rows_per_shard=3), batch_size=4, device="cpu")
    two, one = TargetStore(tmp_path / "two").manifest, TargetStore(tmp_path / "one").manifest
    assert len(one.shards) == 3 and two.shards == one.shards  # same files, byte for byte (SHA-256)
