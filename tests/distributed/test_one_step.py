"""
One optimizer step of SALT is the same whatever the split of 4 sequences into processes x per-device batch x gradient
accumulation, under DDP, DeepSpeed ZeRO-2 and ZeRO-3, with the teacher replicated or sharded with ZeRO-3 inference.

Real processes: `torchrun --standalone --nproc_per_node 2` (gloo, CPU), DeepSpeed with DS_ACCELERATOR=cpu, the shipped
deepspeed_configs/zero{2,3}.json. The reference is one process holding all 4 sequences, without any wrapper.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from common import check, torchrun
from fixtures import reference, teacher_dir  # noqa: F401 (fixtures)

pytestmark = pytest.mark.distributed
pytest.importorskip("deepspeed")

WORKER = Path(__file__).with_name("one_step_worker.py")
TOL = {"ddp": 1e-6, "zero2": 1e-5, "zero3": 1e-5}
# world x per-device batch [x accumulation] : teacher placement
CASES = ["2x2:replicate", "2x1x2:replicate", "2x2:zero3", "2x1x2:zero3"]


def run_worker(backend: str, cases: list[str], teacher: str, out: Path, nproc: int = 2) -> dict[str, dict]:
    args = ["--backend", backend, "--teacher", teacher, "--out", str(out)]
    for case in cases:
        args += ["--case", case]
    proc, seconds = torchrun(WORKER, args, nproc=nproc)
    check(proc)
    print(f"{backend}: {len(cases)} cases in one launch of {nproc} processes, {seconds:.1f} s")
    return {case: torch.load(out / f"{backend}-{case.replace(':', '-')}.pt") for case in cases}


def assert_teacher_placement(case: str, ranks: list[dict], world: int, sharded: bool = True) -> None:
    placement = case.split(":")[1]
    assert len(ranks) == world
    for rank in ranks:
        assert rank["placement"] == placement and rank["released"], rank  # released after n_KD on every rank
        if placement == "zero3":  # really sharded: each process holds a part of the teacher
            assert rank["partitioned"] and rank["wrapper"] == "DeepSpeedEngine", rank
            if sharded:  # with a world of one, the one process holds every partition
                assert rank["local_numel"] < 0.75 * rank["full_numel"], rank
        else:  # whole on every process, on the process's device, never wrapped
            assert not rank["partitioned"] and rank["local_numel"] == rank["full_numel"], rank
            assert rank["wrapper"] == "LlamaForCausalLM" and rank["device"] == "cpu", rank


@pytest.mark.parametrize("backend", ["ddp", "zero2", "zero3"])
def test_one_step_equals_single_process(backend, teacher_dir, reference, tmp_path):  # noqa: F811
    start, ref = reference
    assert (ref - start).abs().max() > 1e-3  # the step moved the weights
    cases = CASES + (["2x2:replicate:no_process_factor"] if backend == "ddp" else [])
    results = run_worker(backend, cases, teacher_dir, tmp_path)
    for case in cases:
        result = results[case]
        # really distributed: Accelerate runs a process alone, silently, when it does not detect the launch
        assert result["num_processes"] == 2 and result["deepspeed"] == (backend != "ddp"), result
        assert result["distributed_type"] == ("DistributedType.MULTI_CPU" if backend == "ddp" else
                                              "DistributedType.DEEPSPEED"), result  # fmt: skip
        assert result["student_partitioned"] == (backend == "zero3")
        assert_teacher_placement(case, result["ranks"], world=2)
        diff = (result["weights"] - ref).abs().max().item()
        print(f"{backend} {case}: max |diff| = {diff:.3g}")
        if case.endswith("no_process_factor"):
            assert diff > 1e-4  # negative control: without the process factor the step is half as long
        else:
            assert diff <= TOL[backend], (case, diff)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "zero2", "zero3"])
def test_one_process_under_each_backend_equals_reference(backend, teacher_dir, reference, tmp_path):  # noqa: F811
    """1 process x 4 sequences launched with torchrun under each backend (DDP and DeepSpeed with a world of one)."""
    _, ref = reference
    cases = ["1x4:replicate", "1x4:zero3"]
    results = run_worker(backend, cases, teacher_dir, tmp_path, nproc=1)
    for case in cases:
        assert_teacher_placement(case, results[case]["ranks"], world=1, sharded=False)
        diff = (results[case]["weights"] - ref).abs().max().item()
        print(f"{backend} {case}: max |diff| = {diff:.3g}")
        assert diff <= TOL[backend], (case, diff)
