"""How the fused-linear loss's chunk size sets its time at a large vocabulary (issue 15's chunk floor).

    python benchmarks/micro/fused_chunk_size.py  # 1 thread, 512 tokens x vocab 151,936, ~6 min; prints seconds

One call of `fused_linear_salt_loss` with KD (student width 512, teacher 256) plus its backward, per chunk size
(None: the automatic one), beside the plain cross-entropy on materialised logits, interleaved, two rounds. Each chunk
re-reads the [V, H] output weight and reads and writes its fp32 gradient, so small chunks pay those passes many times.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench.py puts every study on the path

import bench  # noqa: E402, F401  (puts every study folder on sys.path)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from salt_hf.losses import fused_linear_salt_loss  # noqa: E402

N, H, HT, V = 512, 512, 256, 151936
SIZES = (27, 64, 128, 256, 512, None)  # 27: the 16 MiB rule at this vocabulary, the automatic chunk before issue 15


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    h, ht = torch.randn(N, H, generator=g) * 0.5, torch.randn(N, HT, generator=g) * 0.5
    w = (torch.randn(V, H, generator=g) * 0.02).requires_grad_()
    wt = torch.randn(V, HT, generator=g) * 0.02
    labels = torch.randint(0, V, (N,), generator=g)

    def fused(chunk):
        out = fused_linear_salt_loss(
            h.clone().requires_grad_(), w, labels, ht, wt, kd_weight=0.5, nll_weight=0.5, chunk_size=chunk
        )
        out.loss.backward()

    def plain_ce():
        F.cross_entropy(h.clone().requires_grad_() @ w.T, labels, reduction="sum").backward()

    variants = {str(c): (lambda c=c: fused(c)) for c in SIZES} | {"plain_ce": plain_ce}
    for rep in range(2):
        times = {}
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            w.grad = None
            times[name] = round(time.perf_counter() - t0, 2)
        print(rep, times, flush=True)


if __name__ == "__main__":
    # no options: --help prints what it measures
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
