"""
The precompute of stored teacher targets on every process of a torchrun launch, for
tests/distributed/test_stored_targets.py.

    PYTHONPATH=tests torchrun --standalone --nproc_per_node 2 tests/distributed/targets_worker.py \
        --manifest M --out DIR

Writes the store of `teacher_model()` over `step_dataset(8)` with the settings of the JSON manifest `M` into DIR.
"""

from __future__ import annotations

import argparse
import json

from accelerate import PartialState
from common import exit_worker, step_dataset, teacher_model

from salt_hf.targets import Manifest, write_store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True)
    cli = parser.parse_args()
    manifest = Manifest(**json.loads(open(cli.manifest).read()))
    PartialState(cpu=True)
    write_store(teacher_model(), step_dataset(8), cli.out, manifest, batch_size=1, device="cpu")
    exit_worker()


if __name__ == "__main__":
    main()
