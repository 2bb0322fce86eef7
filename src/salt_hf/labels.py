"""The labels SALTTrainer reads from a batch: the causal-LM next-token targets."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def pop_shift_labels(inputs: dict[str, Any]) -> torch.Tensor:
    """Removes the labels from `inputs` and returns them shifted: position t predicts token t + 1."""
    labels = inputs.pop("labels", None)
    shift_labels = inputs.pop("shift_labels", None)
    if shift_labels is not None:
        return shift_labels
    if labels is None:
        raise ValueError(
            "SALTTrainer needs `labels` (or `shift_labels`) in every batch: use a causal-LM collator such as "
            "DataCollatorForLanguageModeling(tokenizer, mlm=False) or salt_hf.data's packing."
        )
    # the last position of each row predicts nothing
    return F.pad(labels[..., 1:], (0, 1), value=-100)
