"""The evaluate modules shipped in salt_hf.metrics: each against a naive computation, combined, loaded offline by
path; the Trainer pair (preprocess_logits_for_metrics, NextTokenMetrics) against the logits themselves."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from salt_hf.metrics import (
    IGNORE_INDEX,
    METRICS,
    NextTokenMetrics,
    load_metric,
    load_metrics,
    metric_path,
    next_token_inputs,
    preprocess_logits_for_metrics,
)


def naive_accuracy(predictions, references) -> float:
    pairs = [(p, r) for p, r in zip(predictions, references, strict=True) if r != IGNORE_INDEX]
    return sum(p == r for p, r in pairs) / len(pairs)


def naive_perplexity(log_probs, references) -> float:
    kept = [lp for lp, r in zip(log_probs, references, strict=True) if r != IGNORE_INDEX]
    return math.exp(-sum(kept) / len(kept))


def old_next_token_accuracy(eval_pred) -> dict[str, float]:
    """salt-train's compute_metrics before the metrics moved into evaluate modules, kept as the reference."""
    preds, labels = eval_pred.predictions, eval_pred.label_ids
    preds, labels = preds[:, :-1], labels[:, 1:]
    mask = labels != -100
    return {"accuracy": float((preds[mask] == labels[mask]).mean()) if mask.any() else math.nan}


@pytest.fixture
def tokens():
    """1,000 positions over a 41-token vocabulary, about 30% unsupervised, predictions right about half the time."""
    rng = np.random.default_rng(0)
    references = rng.integers(0, 41, size=1000)
    references[rng.random(1000) < 0.3] = IGNORE_INDEX
    predictions = np.where(rng.random(1000) < 0.5, references.clip(min=0), rng.integers(0, 41, size=1000))
    log_probs = -rng.exponential(2.0, size=1000)
    return predictions, references, log_probs


def test_modules_ship_inside_the_package_and_load_offline():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    for name in METRICS:
        assert resources.files("salt_hf.metrics").joinpath(name, f"{name}.py").is_file()
        assert load_metric(name).name == name
    with pytest.raises(ValueError, match="Unknown metric 'bleu'"):
        metric_path("bleu")


def test_next_token_accuracy_matches_a_naive_count(tokens):
    predictions, references, _ = tokens
    got = load_metric("next_token_accuracy").compute(predictions=predictions, references=references)
    assert got["accuracy"] == pytest.approx(naive_accuracy(predictions, references), abs=1e-12)
    # the docstring's example, and no supervised position at all
    assert load_metric("next_token_accuracy").compute(predictions=[5, 2, 9], references=[5, 3, -100]) == {
        "accuracy": 0.5
    }
    assert math.isnan(load_metric("next_token_accuracy").compute(predictions=[1], references=[-100])["accuracy"])


def test_perplexity_matches_a_naive_computation(tokens):
    _, references, log_probs = tokens
    got = load_metric("perplexity").compute(log_probs=log_probs, references=references)
    assert got["perplexity"] == pytest.approx(naive_perplexity(log_probs, references), rel=1e-12)
    example = load_metric("perplexity").compute(log_probs=[-1.0, -3.0, 0.0], references=[4, 7, -100])
    assert example["perplexity"] == pytest.approx(math.exp(2.0), rel=1e-15)


def test_evaluate_combine_of_both_in_batches(tokens):
    predictions, references, log_probs = tokens
    metrics = load_metrics()
    for start in range(0, 1000, 300):  # uneven batches: the result must not depend on the split
        part = slice(start, start + 300)
        metrics.add_batch(predictions=predictions[part], references=references[part], log_probs=log_probs[part])
    got = metrics.compute()
    assert set(got) == {"accuracy", "perplexity"}
    assert got["accuracy"] == pytest.approx(naive_accuracy(predictions, references), abs=1e-12)
    assert got["perplexity"] == pytest.approx(naive_perplexity(log_probs, references), rel=1e-12)


def test_modules_load_offline_from_an_empty_cache(tmp_path):
    """A fresh process with nothing cached and the hub offline: the modules load from the package by path."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    code = (
        "from salt_hf.metrics import load_metrics\n"
        "m = load_metrics()\n"
        "m.add_batch(predictions=[1, 2], references=[1, 3], log_probs=[-1.0, -1.0])\n"
        "print(m.compute())\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'accuracy': 0.5" in proc.stdout and "'perplexity': 2.718" in proc.stdout


def test_trainer_pair_against_the_logits():
    """3 x 17 x 41 logits, unequal supervised lengths: top tokens, label log-probs, and the metrics of both."""
    torch.manual_seed(0)
    logits = torch.randn(3, 17, 41) * 3
    labels = torch.randint(0, 41, (3, 17))
    labels[0, 10:] = IGNORE_INDEX
    labels[2, :4] = IGNORE_INDEX
    labels[1, 5] = IGNORE_INDEX
    top, label_log_probs = preprocess_logits_for_metrics(logits, labels)
    assert top.shape == label_log_probs.shape == (3, 17) and label_log_probs.dtype == torch.float32
    assert torch.equal(top, logits.argmax(-1))
    logp = torch.log_softmax(logits.double(), dim=-1)
    for b in range(3):
        for t in range(16):
            label = labels[b, t + 1].item()
            expected = logp[b, t, label].item() if label != IGNORE_INDEX else 0.0
            assert label_log_probs[b, t].item() == pytest.approx(expected, abs=1e-5)
    assert (label_log_probs[:, -1] == 0).all()

    eval_pred = EvalPrediction(predictions=(top.numpy(), label_log_probs.numpy()), label_ids=labels.numpy())
    got = NextTokenMetrics()(eval_pred)
    # the accuracy salt-train reported before (the demo reads it as eval_accuracy): the very same number
    assert got["accuracy"] == old_next_token_accuracy(EvalPrediction(top.numpy(), labels.numpy()))["accuracy"]
    inputs = next_token_inputs(top.numpy(), label_log_probs.numpy(), labels.numpy())
    mask = labels[:, 1:] != IGNORE_INDEX
    nll = -logp[:, :-1].gather(-1, labels[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask].mean().item()
    assert got["perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert len(inputs["references"]) == 3 * 16


def test_metrics_of_a_fully_masked_evaluation_are_nan():
    labels = np.full((2, 5), IGNORE_INDEX)
    eval_pred = EvalPrediction(predictions=(np.zeros((2, 5), int), np.zeros((2, 5))), label_ids=labels)
    got = NextTokenMetrics()(eval_pred)
    assert math.isnan(got["accuracy"]) and math.isnan(got["perplexity"])
