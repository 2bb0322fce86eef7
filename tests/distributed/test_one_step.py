"""
One optimizer step of SALT is the same whatever the split of 4 sequences into processes x per-device batch x gradient
accumulation, under DDP, DeepSpeed ZeRO-2 and ZeRO-3, with the teacher replicated or sharded with ZeRO-3 inference,
on the logits path and the fused-linear one (`loss_implementation`, salt_hf.losses.head).

Real processes: `torchrun --standalone --nproc_per_node 2` (gloo, CPU), DeepSpeed with DS_ACCELERATOR=cpu, the shipped
deepspeed_configs/zero{2,3}.json; and a two-node launch simulated on one machine. The reference is one process holding
all 4 sequences, without any wrapper, on the logits path.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from common import (
    ROOT,
    check,
    free_port,
    launch_env,
    step_dataset,
    student_model,
    teacher_model,
    torchrun,
    worker_threads,
)
from fixtures import flat_params, one_sgd_step_config

from salt_hf import SALTTrainer

pytestmark = pytest.mark.distributed
pytest.importorskip("deepspeed")

WORKER = Path(__file__).with_name("one_step_worker.py")
# One SGD step, theta - lr * g (lr 0.5, no momentum, so nothing magnifies a difference): a split adds the same
# per-token gradient terms in another order (per process, then in gloo's all-reduce), which moves an entry of lr * g
# (at most ~0.1) by a few of its ulps (7.5e-9 each), and theta (|theta| <= 1) then rounds to a neighbouring float at
# most (1.2e-7): under 1e-6. DeepSpeed's own steps (flat gradient buckets averaged over the processes, ZeRO-3's
# partitioning and gathering of the weights) are copies, a halving and single roundings, so the same bound holds;
# its tolerance stays the 1e-5 that deepspeed_configs/README.md quotes. Measured: 7.5e-9 for DDP and ZeRO-2 alike.
TOL = {"ddp": 1e-6, "zero2": 1e-5, "zero3": 1e-5}
# world x per-device batch [x accumulation] : teacher placement [: loss_implementation, "auto" if none]
SPLITS = ["2x2:replicate", "2x1x2:replicate", "2x2:zero3", "2x1x2:zero3"]
CASES = [f"{split}:{implementation}" for implementation in ("logits", "fused_linear") for split in SPLITS]
TWO_NODE_CASES = ["2x2:zero3", "2x1x2:replicate"]


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("teacher")
    teacher_model().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def reference(teacher_dir, tmp_path_factory) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, after one step) for 1 process x 4 sequences, no distributed wrapper, with the workers' thread count."""
    out = tmp_path_factory.mktemp("reference")
    args = one_sgd_step_config(str(out), batch=4, accum=1, use_cpu=True, loss_implementation="logits")
    with worker_threads():
        trainer = SALTTrainer(
            model=student_model(), teacher_model=teacher_dir, args=args, train_dataset=step_dataset()
        )
        trainer.train()
    return flat_params(student_model()), flat_params(trainer.model)


def run_worker(
    backend: str, cases: list[str], teacher: str, out: Path, nproc: int = 2, extra: list[str] | None = None
) -> dict[str, dict]:
    args = ["--backend", backend, "--teacher", teacher, "--out", str(out), *(extra or [])]
    for case in cases:
        args += ["--case", case]
    proc, seconds = torchrun(WORKER, args, nproc=nproc)
    check(proc)
    print(f"{backend}: {len(cases)} cases in one launch of {nproc} processes, {seconds:.1f} s")
    return {case: torch.load(out / f"{backend}-{case.replace(':', '-')}.pt") for case in cases}


def assert_loss_implementation(case: str, result: dict) -> None:
    """The path the run took: "logits" where the case asks for it, else fused_linear ("auto" picks it for Llama)."""
    expected = "logits" if case.endswith(":logits") else "fused_linear"
    assert result["loss_implementation"] == expected, (case, result["loss_implementation"])


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
def test_one_step_equals_single_process(backend, teacher_dir, reference, tmp_path):
    start, ref = reference
    assert (ref - start).abs().max() > 1e-3  # the step moved the weights
    cases = CASES + (["2x2:replicate:no_process_factor"] if backend == "ddp" else [])
    results = run_worker(backend, cases, teacher_dir, tmp_path)
    for case in cases:
        result = results[case]
        # really distributed: Accelerate runs a process alone, silently, when it does not detect the launch
        assert result["num_processes"] == 2 and result["deepspeed"] == (backend != "ddp"), result
        expected_type = "DistributedType.MULTI_CPU" if backend == "ddp" else "DistributedType.DEEPSPEED"
        assert result["distributed_type"] == expected_type, result
        assert result["student_partitioned"] == (backend == "zero3")
        assert_teacher_placement(case, result["ranks"], world=2)
        assert_loss_implementation(case, result)
        diff = (result["weights"] - ref).abs().max().item()
        print(f"{backend} {case}: max |diff| = {diff:.3g}")
        if case.endswith("no_process_factor"):
            assert diff > 1e-4  # negative control: without the process factor the step is half as long
        else:
            assert diff <= TOL[backend], (case, diff)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "zero2", "zero3"])
def test_one_process_under_each_backend_equals_reference(backend, teacher_dir, reference, tmp_path):
    """1 process x 4 sequences launched with torchrun under each backend (DDP and DeepSpeed with a world of one)."""
    _, ref = reference
    cases = ["1x4:replicate:logits", "1x4:zero3:fused_linear"]
    results = run_worker(backend, cases, teacher_dir, tmp_path, nproc=1)
    for case in cases:
        assert_teacher_placement(case, results[case]["ranks"], world=1, sharded=False)
        assert_loss_implementation(case, results[case])
        diff = (results[case]["weights"] - ref).abs().max().item()
        print(f"{backend} {case}: max |diff| = {diff:.3g}")
        assert diff <= TOL[backend], (case, diff)


def launch_two_nodes(args: list[str], logs: Path) -> list[int]:
    """Two torchrun node ranks of one process each, meeting over loopback; their exit codes."""
    port = free_port()
    procs = []
    for node_rank in (0, 1):
        launcher = ["--nnodes", "2", "--node_rank", str(node_rank), "--nproc_per_node", "1"]
        launcher += ["--master_addr", "127.0.0.1", "--master_port", str(port)]
        cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, str(WORKER), *args]
        with open(logs / f"node{node_rank}.log", "w") as log:  # the child holds its own copy of the descriptor
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=launch_env(), stdout=log, stderr=subprocess.STDOUT))
    try:
        first = procs[0].wait(timeout=600)
        if first != 0:  # node 0 hosts the rendezvous: without it, node 1 would wait out its own timeout
            procs[1].kill()
        return [first, procs[1].wait(timeout=600)]
    finally:
        for proc in procs:
            if proc.poll() is None:  # timed out
                proc.kill()
                proc.wait()


def test_two_node_launch_over_loopback(teacher_dir, reference, tmp_path):
    """A two-node launch simulated on one machine: two torchrun node ranks over loopback run the one-step worker."""
    args = ["--backend", "zero3", "--teacher", teacher_dir, "--out", str(tmp_path)]
    for case in TWO_NODE_CASES:
        args += ["--case", case]
    start = time.perf_counter()
    for _ in range(3):  # the port is free when chosen; another process may take it before node 0 binds it
        codes = launch_two_nodes(args, tmp_path)
        logs = {n: (tmp_path / f"node{n}.log").read_text()[-6000:] for n in (0, 1)}
        if codes == [0, 0] or "EADDRINUSE" not in logs[0]:
            break
    print(f"two-node launch: {time.perf_counter() - start:.1f} s")
    assert codes == [0, 0], logs
    _, ref = reference
    for case in TWO_NODE_CASES:
        result = torch.load(tmp_path / f"zero3-{case.replace(':', '-')}.pt")
        assert_teacher_placement(case, result["ranks"], world=2)
        assert_loss_implementation(case, result)
        diff = (result["weights"] - ref).abs().max().item()
        print(f"two nodes, zero3 {case}: max |diff| = {diff:.3g}")
        assert diff <= TOL["zero3"], (case, diff)
