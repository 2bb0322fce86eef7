"""The loss of a KD step reading stored targets against the plain loss, on the same hidden states (CPU, fp32).

    python benchmarks/teacher_targets/loss_cost.py                 # vocab 32k and 152k -> results/teacher_targets
    python benchmarks/teacher_targets/loss_cost.py --vocabs 8192 --rounds 3   # smoke run

Where a large vocabulary's step goes: the output layer and its loss. Each variant is `fused_linear_salt_loss`'s forward
and backward on the same student hidden states ([tokens, H], the student's output weight [V, H]): the plain NLL
(SALT's plain stage), the KD term against stored targets (sampled and top-K, K ids per token, as the trainer reads
them from a store), and the KD term against an online teacher's hidden states and output weight (its forward not
counted). They run interleaved, round after round, each round starting with the next variant; the ratio of each
round's times to the plain loss's in the same round is taken, and the median over the rounds reported (a busy machine
slows a round as a whole). Transient memory: each variant once in a fresh process, its peak resident set above the
resident set before it (step_cost.py's method).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared helpers beside the studies

import bench  # noqa: E402
import step_cost  # noqa: E402
import torch  # noqa: E402
from transient_memory import transient_peaks  # noqa: E402

from salt_hf.losses import SparseTargets, fused_linear_salt_loss  # noqa: E402
from salt_hf.targets import row_targets, row_uniforms, weights_of  # noqa: E402

VARIANTS = ("plain", "stored_sampled", "stored_topk", "online")


def inputs(vocab: int, tokens: int, hidden: int, teacher_hidden: int, k: int) -> dict:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) / hidden**0.5
    th = torch.randn(tokens, teacher_hidden, generator=g)
    tw = torch.randn(vocab, teacher_hidden, generator=g) / teacher_hidden**0.5
    labels = torch.randint(0, vocab, (tokens,), generator=g)
    stores = {}
    with torch.no_grad():
        t_logits = th @ tw.T
    for form in ("sampled", "topk"):
        u = row_uniforms(0, 0, tokens, k) if form == "sampled" else None
        r = row_targets(t_logits, labels, form=form, k=k, temperature=1.0, uniforms=u)
        # as the store holds them: ids in int32, values in their stored dtype; the reader widens and weighs them
        stores[form] = (r.ids.to(torch.int32), r.values, r.teacher_nll, r.offset)
    del t_logits
    return {"h": h, "w": w, "th": th, "tw": tw, "labels": labels, "stores": stores}


def run(variant: str, x: dict) -> None:
    h, w = x["h"].clone().requires_grad_(), x["w"].clone().requires_grad_()
    kw = dict(nll_weight=0.5, kd_weight=0.5)
    if variant == "plain":
        out = fused_linear_salt_loss(h, w, x["labels"])
    elif variant == "online":
        out = fused_linear_salt_loss(h, w, x["labels"], x["th"], x["tw"], **kw)
    else:
        form = variant.removeprefix("stored_")
        ids, values, nll, offset = x["stores"][form]
        targets = SparseTargets(ids.long(), weights_of(form, values), nll, offset)
        out = fused_linear_salt_loss(h, w, x["labels"], teacher_targets=targets, **kw)
    out.loss.backward()


def time_all(vocab: int, cli) -> dict:
    x = inputs(vocab, cli.tokens, cli.hidden, cli.teacher_hidden, cli.k)
    for _ in range(2):  # warm-up
        for v in VARIANTS:
            run(v, x)
    rounds = []
    for i in range(cli.rounds):
        times = {}
        for v in VARIANTS[i % len(VARIANTS) :] + VARIANTS[: i % len(VARIANTS)]:  # each variant first in turn
            t0 = time.perf_counter()
            run(v, x)
            times[v] = time.perf_counter() - t0
        rounds.append(times)
    row = {"vocab": vocab, "tokens": cli.tokens, "hidden": cli.hidden, "k": cli.k, "rounds": cli.rounds}
    row |= {f"{v}_s": statistics.median(r[v] for r in rounds) for v in VARIANTS}
    row |= {f"{v}_over_plain": statistics.median(r[v] / r["plain"] for r in rounds) for v in VARIANTS[1:]}
    return row


def child(vocab: int, variant: str, cli) -> dict:
    x = inputs(vocab, cli.tokens, cli.hidden, cli.teacher_hidden, cli.k)
    run(variant, x)
    before = step_cost._status_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    run(variant, x)
    return {"variant": variant, "transient_mib": step_cost._status_mib("VmHWM") - before}


def peaks(vocab: int, cli) -> dict:
    options = ["--tokens", str(cli.tokens), "--hidden", str(cli.hidden), "--teacher-hidden", str(cli.teacher_hidden)]
    return transient_peaks(__file__, [str(vocab)], VARIANTS, options + ["--k", str(cli.k)])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocabs", default="32768,151936")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=512, help="the student's width (step_cost.py's 8x512)")
    parser.add_argument("--teacher-hidden", type=int, default=256)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(bench.RESULTS / "teacher_targets" / "loss_cost.json"))
    parser.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    if cli._child:
        print(json.dumps(child(int(cli._child[0]), cli._child[1], cli)))
        return
    rows = []
    for vocab in [int(v) for v in cli.vocabs.split(",")]:
        t0 = time.time()
        row = time_all(vocab, cli) | peaks(vocab, cli)
        row["wall_s"], row["threads"] = time.time() - t0, cli.threads
        rows.append(row)
        print(json.dumps(row), flush=True)
    bench.write_json(Path(cli.out), rows, indent=1)


if __name__ == "__main__":
    main()
