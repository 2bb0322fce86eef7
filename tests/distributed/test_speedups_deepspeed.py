"""
Layer-wise learning rates and sequence-length warmup with SALT under DeepSpeed ZeRO-2 (one real process, torchrun,
CPU): the groups SALTTrainer builds survive DeepSpeed's wrapping and the run ends where the same run without DeepSpeed
ends.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from common import check, torchrun, worker_threads
from fixtures import flat_params
from speedups_worker import DECAY, LR, speedup_args, train

pytestmark = pytest.mark.distributed
pytest.importorskip("deepspeed")

WORKER = Path(__file__).with_name("speedups_worker.py")
TOP = 3  # the student of common.py: 2 layers; embeddings 0, final norm and head 3


def test_layerwise_groups_and_seq_warmup_under_zero2(tmp_path):
    proc, seconds = torchrun(WORKER, ["--out", str(tmp_path)], nproc=1)
    check(proc)
    print(f"zero2 speed-ups run: {seconds:.1f} s")
    result = torch.load(tmp_path / "zero2.pt")
    assert result["deepspeed"] and result["optimizer"] == "DeepSpeedZeroOptimizer"
    # the DeepSpeed optimizer holds the layer-wise groups: each depth at its rate, the Trainer's decay split kept
    assert sorted({g["layer_depth"] for g in result["groups"]}) == [0, 1, 2, 3]
    for group in result["groups"]:
        assert group["lr"] == pytest.approx(LR * DECAY ** (TOP - group["layer_depth"]), rel=1e-12)
    assert len(result["groups"]) > TOP + 1  # decay and no-decay groups at the same depth stay apart
    assert all(math.isfinite(loss) for loss in result["losses"]) and len(result["losses"]) == 3

    # no DeepSpeed, in this process, with the worker's thread count: the same kernels on the same rows, so the runs
    # differ only by DeepSpeed's handling of the step (its flat fp32 buffers); speedup_args bounds what AdamW makes of
    # a rounding difference (measured: 0)
    with worker_threads():
        reference = train(speedup_args(str(tmp_path / "reference"), use_cpu=True))
        # negative control: the same run with one learning rate for all layers ends elsewhere
        plain = train(speedup_args(str(tmp_path / "plain"), use_cpu=True, layerwise_lr_decay=1.0))
    diff = (result["weights"] - flat_params(reference.model)).abs().max().item()
    print(f"zero2 vs no DeepSpeed: max |diff| = {diff:.3g}")
    assert diff <= 1e-5
    assert (result["weights"] - flat_params(plain.model)).abs().max() > 1e-4
