"""Next-token accuracy: the fraction of supervised tokens that are the model's top prediction."""

import math

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Next-token accuracy of a causal language model: over the positions that have a label, the fraction where the label
is the model's top token (the argmax of its logits). Predictions and references are aligned token by token: shift
them first (the prediction at position t is for the label at t + 1), as `salt_hf.metrics.next_token_inputs` does.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): the model's top token at each position.
    references (`list[int]`): the label at each position; `ignore_index` marks a position without one.
    ignore_index (`int`, *optional*, defaults to `-100`): the label of unsupervised positions.
Returns:
    accuracy (`float`): correct / supervised positions; NaN when no position is supervised.
Examples:
    >>> accuracy = salt_hf.metrics.load_metric("next_token_accuracy")
    >>> accuracy.compute(predictions=[5, 2, 9], references=[5, 3, -100])
    {'accuracy': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class NextTokenAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            # read back as Python objects: the "numpy" format would return float64 columns as float32
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, ignore_index=-100):
        predictions, references = np.asarray(predictions), np.asarray(references)
        mask = references != ignore_index
        if not mask.any():
            return {"accuracy": math.nan}
        return {"accuracy": float((predictions[mask] == references[mask]).mean())}
