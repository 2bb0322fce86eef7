"""A two-node launch simulated on one machine: two torchrun node ranks over loopback run the one-step worker."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from common import ROOT, free_port, launch_env
from fixtures import reference, teacher_dir  # noqa: F401 (fixtures)
from test_one_step import WORKER, assert_teacher_placement

pytestmark = pytest.mark.distributed
pytest.importorskip("deepspeed")

CASES = ["2x2:zero3", "2x1x2:replicate"]


def test_two_node_launch_over_loopback(teacher_dir, reference, tmp_path):  # noqa: F811
    port = free_port()
    args = ["--backend", "zero3", "--teacher", teacher_dir, "--out", str(tmp_path)]
    for case in CASES:
        args += ["--case", case]
    procs = []
    start = time.perf_counter()
    for node_rank in (0, 1):
        launcher = ["--nnodes", "2", "--node_rank", str(node_rank), "--nproc_per_node", "1",
                    "--master_addr", "127.0.0.1", "--master_port", str(port)]  # fmt: skip
        cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, str(WORKER), *args]
        log = open(tmp_path / f"node{node_rank}.log", "w")  # noqa: SIM115 (closed below)
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=launch_env(), stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    for proc, log in procs:
        try:
            codes.append(proc.wait(timeout=600))
        finally:
            log.close()
    print(f"two-node launch: {time.perf_counter() - start:.1f} s")
    logs = {n: Path(tmp_path / f"node{n}.log").read_text()[-6000:] for n in (0, 1)}
    assert codes == [0, 0], logs
    start_weights, ref = reference
    for case in CASES:
        result = torch.load(Path(tmp_path) / f"zero3-{case.replace(':', '-')}.pt")
        assert_teacher_placement(case, result["ranks"], world=2)
        diff = (result["weights"] - ref).abs().max().item()
        print(f"two nodes, zero3 {case}: max |diff| = {diff:.3g}")
        assert diff <= 1e-5, (case, diff)
