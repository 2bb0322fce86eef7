"""
Metrics of causal language models as Hugging Face `evaluate` modules shipped inside the package: each folder here
holds a script of its name with an `evaluate.Metric`. They load by path, so they work offline (HF_HUB_OFFLINE=1), and
compose with `evaluate.combine`:

    metrics = load_metrics()  # evaluate.combine of next_token_accuracy and perplexity
    metrics.add_batch(**next_token_inputs(top_tokens, label_log_probs, labels))
    metrics.compute()  # {"accuracy": ..., "perplexity": ...}

For a `Trainer`, pass `compute_metrics=NextTokenMetrics()` with `preprocess_logits_for_metrics`: evaluation then
keeps two numbers per token (the top token and the label's log-probability), never the logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IGNORE_INDEX = -100
METRICS = ("next_token_accuracy", "perplexity")


def metric_path(name: str) -> str:
    """The folder of the evaluate module `name` (one of `METRICS`) inside the installed package."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}: salt_hf ships {', '.join(METRICS)}.")
    return str(Path(__file__).with_name(name))


def load_metric(name: str, **kwargs):
    """`evaluate.load` of the module `name` (one of `METRICS`) by its path; `kwargs` go to `evaluate.load`."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)


def load_metrics(names: tuple[str, ...] = METRICS, **kwargs):
    """`evaluate.combine` of the modules `names`: feed it with `add_batch(**next_token_inputs(...))`."""
    import evaluate

    return evaluate.combine([load_metric(name, **kwargs) for name in names])


def preprocess_logits_for_metrics(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    What evaluation keeps of a batch's logits (`[B, T, V]`, with the unshifted `labels`, `[B, T]`): the top token at
    each position (`[B, T]`) and the log-probability of the next position's label (`[B, T]`, fp32; 0 at the last
    position and where the next label is `IGNORE_INDEX`). Full-vocabulary eval logits would cost B x T x V per batch.
    """
    if isinstance(logits, tuple):  # outputs beyond the logits (e.g. past key values) come as a tuple
        logits = logits[0]
    top = logits.argmax(dim=-1)
    shifted = logits[:, :-1].float()
    following = labels[:, 1:]
    picked = shifted.gather(-1, following.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    label_log_probs = torch.zeros(top.shape, dtype=torch.float32, device=logits.device)
    label_log_probs[:, :-1] = (picked - torch.logsumexp(shifted, dim=-1)).masked_fill(following == IGNORE_INDEX, 0.0)
    return top, label_log_probs


def next_token_inputs(top: np.ndarray, label_log_probs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """
    The modules' inputs from `preprocess_logits_for_metrics`'s outputs and the unshifted labels (all `[B, T]`): the
    prediction at position t is aligned with the label at t + 1, and everything is flattened.
    """
    return {
        "predictions": np.asarray(top)[:, :-1].reshape(-1),
        "log_probs": np.asarray(label_log_probs)[:, :-1].reshape(-1),
        "references": np.asarray(labels)[:, 1:].reshape(-1),
    }


class NextTokenMetrics:
    """
    `compute_metrics` for a `Trainer` whose `preprocess_logits_for_metrics` is the function above: returns
    `{"accuracy": ..., "perplexity": ...}` (the Trainer logs them as `eval_accuracy` and `eval_perplexity`).
    """

    def __init__(self, names: tuple[str, ...] = METRICS):
        # in memory: every process of a multi-process run computes the metrics of the gathered predictions itself
        self.metrics = load_metrics(names, keep_in_memory=True)

    def __call__(self, eval_pred) -> dict[str, float]:
        top, label_log_probs = eval_pred.predictions
        self.metrics.add_batch(**next_token_inputs(top, label_log_probs, eval_pred.label_ids))
        return self.metrics.compute()
