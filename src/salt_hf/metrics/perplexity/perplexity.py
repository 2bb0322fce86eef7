"""Perplexity of a causal language model from the log-probabilities it gives the labels."""

import math

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Token-level perplexity, exp(-mean log p(label)), over the positions that have a label: the exponential of the mean
next-token negative log-likelihood (nats). The inputs are the natural-log probability the model gives each label,
aligned with the labels (`salt_hf.metrics.next_token_inputs` shifts and flattens them), so no logits are needed.
"""

_KWARGS_DESCRIPTION = """
Args:
    log_probs (`list[float]`): the log-probability (natural log) the model gives the label at each position.
    references (`list[int]`): the label at each position; `ignore_index` marks a position without one.
    ignore_index (`int`, *optional*, defaults to `-100`): the label of unsupervised positions.
Returns:
    perplexity (`float`): exp of the mean negative log-probability; NaN when no position is supervised.
Examples:
    >>> perplexity = salt_hf.metrics.load_metric("perplexity")
    >>> perplexity.compute(log_probs=[-1.0, -3.0, 0.0], references=[4, 7, -100])
    {'perplexity': 7.38905609893065}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            # read back as Python objects: the "numpy" format would return float64 columns as float32
            features=datasets.Features(
                {"log_probs": datasets.Value("float64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, log_probs, references, ignore_index=-100):
        log_probs, references = np.asarray(log_probs, dtype=np.float64), np.asarray(references)
        mask = references != ignore_index
        if not mask.any():
            return {"perplexity": math.nan}
        return {"perplexity": float(np.exp(-log_probs[mask].mean()))}
