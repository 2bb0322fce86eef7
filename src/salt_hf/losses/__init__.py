"""
SALT's loss, `(1 - w) * NLL + w * KD(teacher -> student)` as token sums, in two implementations that share their chunk
math and one reference:

    chunks.py        the value and gradient of one chunk of tokens (every divergence, temperature, padded vocabulary),
                     the input checks and the chunk size: what both implementations share
    logits.py        `salt_loss`, `kd_loss`, `nll_loss`: on the models' logits
    fused_linear.py  `fused_linear_salt_loss`: on the last hidden states and output weights, no logits held
    reference.py     `reference_salt_loss`: the plain float64 version that tests and benchmarks compare with
    head.py          the head adapter: runs the fused-linear loss inside a Hugging Face model's output layer and
                     chooses between the two implementations for a run (`SALTConfig.loss_implementation`)

All but head.py import torch and the standard library only; head.py (imported as `salt_hf.losses.head`, not from
here) also uses accelerate's unwrapping and logging. No file imports another's private names (tests/test_layout.py).
"""

from .chunks import DIVERGENCES, Divergence, LossOptions, SALTLossOutput, SparseTargets
from .fused_linear import fused_linear_logits, fused_linear_salt_loss
from .logits import kd_loss, nll_loss, salt_loss
from .reference import reference_salt_loss

__all__ = [
    "DIVERGENCES",
    "Divergence",
    "LossOptions",
    "SALTLossOutput",
    "SparseTargets",
    "fused_linear_logits",
    "fused_linear_salt_loss",
    "kd_loss",
    "nll_loss",
    "reference_salt_loss",
    "salt_loss",
]
