"""
Lets transformers' Trainer run DeepSpeed on a machine without GPUs, for the tests. Not needed, and not used, on GPUs.

Accelerate (1.15) picks the process-group backend from the device; on a CPU-only machine it finds none for a
DeepSpeed launch, so DeepSpeed still joins all processes (DS_ACCELERATOR=cpu, gloo) while Accelerate, and with it the
Trainer, counts ONE process: every rank then reads the whole dataset and DeepSpeed's batch-size check fails. This
module hands Accelerate the gloo backend in exactly that case. Use it as a wrapper, which runs the script unchanged:

    DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 tests/distributed/cpu_deepspeed.py train.py \
        --deepspeed deepspeed_configs/zero3.json ...

or call `patch()` first thing in a script.
"""

from __future__ import annotations

import os
import runpy
import sys


def patch() -> None:
    import torch
    from accelerate.state import PartialState

    original = PartialState._prepare_backend
    if getattr(original, "_salt_cpu_deepspeed", False):
        return

    def _prepare_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        if (
            backend is None
            and not cpu
            and not torch.cuda.is_available()
            and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
            and int(os.environ.get("LOCAL_RANK", -1)) != -1
        ):
            backend = "gloo"
        return original(self, cpu, sagemaker_dp, backend)

    _prepare_backend._salt_cpu_deepspeed = True
    PartialState._prepare_backend = _prepare_backend


if __name__ == "__main__":
    patch()
    script, sys.argv = sys.argv[1], sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python script.py` sets it
    runpy.run_path(script, run_name="__main__")
