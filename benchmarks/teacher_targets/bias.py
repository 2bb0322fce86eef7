"""How far a stored target's KD gradient is from the exact one: noise for the sampled form, bias for top-K.

    python benchmarks/teacher_targets/bias.py          # -> results/teacher_targets/bias.json (a minute, one thread)

On the paper-regime pair's corpus (vocabulary 300): the teacher is the half-size one (3x80), the "student" the
quarter-size teacher (2x64), standing in for a student mid-run; 64 held-out rows of 128 tokens. For each form and K
(4, 16, 64): the KD term's gradient with respect to the student's logits, summed over the batch as a step sums it,
against the exact forward-KL gradient `q - p`: `rel_error = |g_stored - g_exact| / |g_exact|`. The sampled form's
error is noise: over 100 stores drawn with different seeds its mean gradient's error falls like 1 / sqrt(100); the
top-K form's error is the same every time (bias).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the shared helpers beside the studies

import bench  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from salt_hf.losses import SparseTargets, salt_loss  # noqa: E402
from salt_hf.targets import row_targets, row_uniforms, weights_of  # noqa: E402

ROWS, DRAWS = 64, 100


def logits_of(name: str, ids: torch.Tensor) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(bench.teacher_dir("regime_python", name)).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.reshape(-1, 300)


def kd_grad(student: torch.Tensor, targets: SparseTargets) -> torch.Tensor:
    z = student.clone().requires_grad_()
    labels = torch.zeros(z.shape[0], dtype=torch.long)
    salt_loss(z, labels, teacher_targets=targets, nll_weight=0.0, kd_weight=1.0).loss.backward()
    return z.grad


def stored(teacher: torch.Tensor, form: str, k: int, seed: int) -> SparseTargets:
    n = teacher.shape[0]
    u = row_uniforms(seed, 0, n, k) if form == "sampled" else None
    r = row_targets(teacher, torch.zeros(n, dtype=torch.long), form=form, k=k, temperature=1.0, uniforms=u)
    return SparseTargets(r.ids, weights_of(form, r.values), r.teacher_nll, r.offset)


def main():
    torch.set_num_threads(1)
    _, _, evals = bench.load_corpus("regime_python")
    ids = evals["test"].rows[:ROWS].long()
    teacher, student = logits_of("paper_half", ids), logits_of("paper_quarter", ids)
    exact = torch.softmax(student, -1) - torch.softmax(teacher, -1)
    norm = exact.norm()
    out = []
    for k in (4, 16, 64):
        grads = [kd_grad(student, stored(teacher, "sampled", k, seed)) for seed in range(DRAWS)]
        one = [float((g - exact).norm() / norm) for g in grads]
        mean = torch.stack(grads).mean(0)
        top = kd_grad(student, stored(teacher, "topk", k, 0))
        row = {
            "k": k,
            "sampled_rel_error_one_store": sum(one) / len(one),
            "sampled_rel_error_mean_of_100": float((mean - exact).norm() / norm),
            "topk_rel_error": float((top - exact).norm() / norm),
            "topk_mass_kept": float(torch.softmax(teacher, -1).topk(k, -1).values.sum(-1).mean()),
        }
        out.append(row)
        print(json.dumps(row), flush=True)
    bench.write_json(bench.RESULTS / "teacher_targets" / "bias.json", {"rows": ROWS, "draws": DRAWS, "by_k": out}, 1)


if __name__ == "__main__":
    # no options: --help prints what it measures
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
