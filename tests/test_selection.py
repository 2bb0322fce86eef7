"""SALT_DS: sequence scores against a naive reference, selection, the sample stream, cached scoring, training."""

from __future__ import annotations

import json
import logging
import statistics

import numpy as np
import pytest
import torch
from datasets import Dataset
from fixtures import RESUME_RUN, SEQ, config, flat_params, make_llama, rows, save_teacher, tiny_salt_trainer
from transformers import LlamaForCausalLM

from salt_hf import SALTConfig, SALTTrainer
from salt_hf.selection import (
    KDSelectionSampler,
    dataset_fingerprint,
    model_fingerprint,
    score_cache_key,
    score_dataset,
    select_sequences,
    sequence_scores,
)

# ---- 1. sequence_scores against loops in float64 --------------------------------------------------------------------


def naive_scores(logits: torch.Tensor, labels: torch.Tensor, top_k: int, ignore_index: int = -100) -> list[float]:
    logits = logits.double()
    out = []
    for b in range(logits.shape[0]):
        kept = []
        for t in range(logits.shape[1]):
            label = int(labels[b, t])
            if label == ignore_index:
                continue
            row = logits[b, t]
            rank = sum(1 for v in range(row.numel()) if row[v] > row[label])  # entries strictly above the label
            if rank < top_k:
                log_z = torch.log(torch.exp(row - row.max()).sum()) + row.max()
                kept.append(float(log_z - row[label]))
        out.append(statistics.median(kept) if kept else float("nan"))
    return out


@pytest.mark.parametrize("top_k", [1, 10, 37])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_sequence_scores_match_naive_reference(top_k, chunk_size):
    g = torch.Generator().manual_seed(top_k)
    batch, seq, vocab = 5, 9, 37
    logits = torch.randn(batch, seq, vocab, generator=g) * 3
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[1, 4:] = -100  # partly masked
    labels[2, :] = -100  # fully masked: no kept token
    labels[3, ::2] = -100
    # row 4: every label is the teacher's least likely token, never in the top k unless k = vocab
    labels[4] = logits[4].argmin(-1)
    # rows 0, 1, 3: some labels are the teacher's favourites, so that top_k=1 keeps some tokens
    labels[0, :3] = logits[0, :3].argmax(-1)
    labels[1, :2] = logits[1, :2].argmax(-1)
    labels[3, 1] = logits[3, 1].argmax(-1)
    got = sequence_scores(logits, labels, top_k=top_k, chunk_size=chunk_size)
    ref = torch.tensor(naive_scores(logits, labels, top_k), dtype=torch.float64)
    assert got.dtype == torch.float32 and got.shape == (batch,)
    assert torch.equal(torch.isnan(got), torch.isnan(ref)), (got, ref)
    assert torch.isnan(got[2])
    assert torch.isnan(got[4]) == (top_k < vocab)
    finite = ~torch.isnan(ref)
    assert finite.sum() >= 2
    torch.testing.assert_close(got.double()[finite], ref[finite], rtol=1e-5, atol=1e-5)


def test_sequence_scores_even_count_median_is_the_mean_of_the_middle_pair():
    # vocab 2, logits chosen so that the per-token NLLs are known: 4 kept tokens -> mean of the 2nd and 3rd
    logits = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]])
    labels = torch.tensor([[0, 0, 0, 0]])
    nll = [torch.logsumexp(logits[0, t], 0).item() - logits[0, t, 0].item() for t in range(4)]
    got = sequence_scores(logits, labels, top_k=2)
    assert got.item() == pytest.approx((sorted(nll)[1] + sorted(nll)[2]) / 2, rel=1e-6)
    assert got.item() != pytest.approx(sorted(nll)[1], rel=1e-3)  # not the lower middle value


def test_sequence_scores_bf16_logits_are_scored_in_fp32():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 50, generator=g) * 4
    labels = torch.randint(0, 50, (2, 6), generator=g)
    got = sequence_scores(logits.bfloat16(), labels, top_k=50)
    ref = torch.tensor(naive_scores(logits.bfloat16().float(), labels, 50))
    torch.testing.assert_close(got, ref.float(), rtol=1e-5, atol=1e-5)


def test_sequence_scores_bad_input():
    with pytest.raises(ValueError, match="aligned"):
        sequence_scores(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="top_k"):
        sequence_scores(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long), top_k=0)
    with pytest.raises(ValueError, match="labels must be in"):
        sequence_scores(torch.zeros(1, 2, 5), torch.tensor([[1, 5]]))


# ---- 2. selection and the sample stream -----------------------------------------------------------------------------


def test_select_sequences_takes_the_top_fraction_or_a_band_and_never_nan():
    scores = np.array([0.5, np.nan, 3.0, 2.0, 9.0, 1.0, np.nan, 4.0, 7.0, 0.1])
    # descending: 9.0 (4), 7.0 (8), 4.0 (7), 3.0 (2), 2.0 (3), 1.0 (5), 0.5 (0), 0.1 (9)
    assert select_sequences(scores, fraction=0.3).tolist() == [4, 7, 8]
    assert select_sequences(scores, fraction=0.3, drop_top=0.1).tolist() == [2, 7, 8]  # skips 9.0
    assert select_sequences(scores, fraction=1.0).tolist() == [0, 2, 3, 4, 5, 7, 8, 9]  # no NaN
    with pytest.raises(ValueError, match="selected no sequence"):
        select_sequences(np.full(4, np.nan), fraction=0.5)
    with pytest.raises(ValueError, match="kd_select_fraction"):
        select_sequences(scores, fraction=0.0)
    with pytest.raises(ValueError, match="kd_select_drop_top"):
        select_sequences(scores, fraction=0.8, drop_top=0.3)


def test_select_sequences_breaks_ties_by_seed_deterministically():
    scores = np.ones(100)
    a = select_sequences(scores, fraction=0.2, seed=1)
    assert a.tolist() == select_sequences(scores, fraction=0.2, seed=1).tolist()
    assert a.tolist() != select_sequences(scores, fraction=0.2, seed=2).tolist()
    assert a.size == 20


def test_sampler_stream_kd_prefix_from_selection_then_whole_dataset():
    selected = np.array([3, 5, 8])
    sampler = KDSelectionSampler(selected, dataset_size=10, kd_samples=8, total_samples=28, seed=4)
    stream = list(sampler)
    assert len(stream) == len(sampler) == 28 and stream == list(sampler)  # deterministic
    kd, rest = stream[:8], stream[8:]
    assert set(kd) <= {3, 5, 8}
    assert sorted(kd[:3]) == [3, 5, 8] and sorted(kd[3:6]) == [3, 5, 8]  # each pass is a permutation of the pool
    assert sorted(rest[:10]) == list(range(10)) and sorted(rest[10:20]) == list(range(10))  # whole-dataset passes
    assert stream != list(KDSelectionSampler(selected, 10, 8, 28, seed=5))


# ---- 3. offline scoring: equals the direct computation, cached, resumable -------------------------------------------


def rows_dataset(token_stream, n, seq=SEQ, masked_tail=True) -> Dataset:
    ids = rows(token_stream, n, seq)
    labels = ids.clone()
    if masked_tail:
        for i in range(n):
            labels[i, seq - (i % 5) :] = -100
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist(), "row_id": list(range(n))})


def test_score_dataset_matches_direct_scores_then_hits_cache_and_resumes(tmp_path, token_stream, teacher, caplog):
    ds = rows_dataset(token_stream, 21)
    with torch.no_grad():
        ids = torch.tensor(ds["input_ids"])
        labels = torch.tensor(ds["labels"])
        # an untrained teacher: a wide top-k keeps enough tokens for finite scores
        direct = sequence_scores(teacher(input_ids=ids).logits[:, :-1], labels[:, 1:], top_k=128)
    seen = []
    hook = teacher.register_forward_hook(lambda m, a, kw, out: seen.append(kw["input_ids"].shape[0]), with_kwargs=True)
    key = score_cache_key(dataset_fingerprint(ds), model_fingerprint(teacher), top_k=128, ignore_index=-100)
    kwargs = dict(cache_dir=tmp_path / "cache", cache_key=key, top_k=128, batch_size=4, shard_size=8)
    scores = score_dataset(teacher, ds, **kwargs)
    assert scores.shape == (21,) and sum(seen) == 21  # 3 shards: 8 + 8 + 5 rows
    assert np.isfinite(scores).sum() >= 15
    np.testing.assert_allclose(scores, direct.numpy(), rtol=1e-5, atol=1e-6)

    # second run: read from the cache, the teacher is not needed
    seen.clear()
    with caplog.at_level(logging.INFO, logger="salt_hf.selection"):
        again = score_dataset(None, ds, load_teacher=lambda: pytest.fail("teacher loaded on a cache hit"), **kwargs)
    assert seen == [] and np.array_equal(again, scores, equal_nan=True)
    assert "reusing the cached scores" in caplog.text

    # interrupted run: the final file and one shard missing -> only that shard is scored again
    folder = tmp_path / "cache" / key
    (folder / "scores.npy").unlink()
    (folder / "rows-0000000008-0000000016.npy").unlink()
    resumed = score_dataset(None, ds, load_teacher=lambda: teacher, **kwargs)
    assert sum(seen) == 8 and np.array_equal(resumed, scores, equal_nan=True)
    hook.remove()


class ScaledLogitsLlama(LlamaForCausalLM):
    """A teacher whose forward post-processes its output layer's output in a way salt_hf cannot know."""

    def forward(self, input_ids=None, **kwargs):
        outputs = super().forward(input_ids=input_ids, **kwargs)
        outputs.logits = outputs.logits * 2.0
        return outputs


def test_scoring_from_hidden_states_equals_logits_and_checks_its_teacher(tmp_path, token_stream, teacher, caplog):
    """Scores from the teacher's hidden states (no [tokens x vocab] logits) equal those from its logits (issue 15)."""
    ds = rows_dataset(token_stream, 10)
    kwargs = dict(top_k=128, batch_size=4, shard_size=8)
    widest = []
    hook = teacher.lm_head.register_forward_hook(lambda m, a, out: widest.append(out.numel()))
    fused = score_dataset(teacher, ds, cache_dir=tmp_path / "fused", **kwargs)
    hook.remove()
    from_logits = score_dataset(teacher, ds, cache_dir=tmp_path / "logits", fused=False, **kwargs)
    np.testing.assert_allclose(fused, from_logits, rtol=1e-6, atol=1e-6)
    assert np.isfinite(fused).sum() >= 8
    # the output layer returned a placeholder, once a probe of 8 positions: never a batch's logits
    assert max(widest) == 8 * teacher.config.vocab_size < 4 * SEQ * teacher.config.vocab_size

    torch.manual_seed(1)
    scaled = ScaledLogitsLlama(teacher.config)
    with caplog.at_level(logging.WARNING, logger="salt_hf.selection"):
        checked = score_dataset(scaled, ds, cache_dir=tmp_path / "scaled", **kwargs)
    assert "scoring on the teacher's logits, because the teacher's own logits differ" in caplog.text
    expected = score_dataset(scaled, ds, cache_dir=tmp_path / "scaled_logits", fused=False, **kwargs)
    assert np.array_equal(checked, expected, equal_nan=True)


def test_fingerprints_change_with_the_teacher_and_the_data(token_stream, teacher):
    ds = rows_dataset(token_stream, 6)
    other = make_llama(teacher.config.vocab_size, 16, 1, seed=2)
    assert model_fingerprint(teacher) == model_fingerprint(teacher)
    assert model_fingerprint(teacher) != model_fingerprint(other)
    assert dataset_fingerprint(ds) != dataset_fingerprint(rows_dataset(token_stream, 6, masked_tail=False))
    as_list = [ds[i] for i in range(len(ds))]
    assert dataset_fingerprint(as_list) == dataset_fingerprint(list(as_list))  # plain lists hash their rows


# ---- 4. training: the KD stage draws from the selection, then from the whole set; exact resume ----------------------


class RecordingCollator:
    """Builds the batch and records the dataset rows (row_id) each micro-batch came from, in order."""

    def __init__(self):
        self.row_ids: list[int] = []

    def __call__(self, features):
        self.row_ids += [f["row_id"] for f in features]
        keys = ("input_ids", "labels")
        return {k: torch.tensor([f[k] for f in features]) for k in keys}


def ds_run(tmp_path, tokenizer, ds, teacher_dir, out, resume=None, **kw):
    collator = RecordingCollator()
    kw = {"kd_select_fraction": 0.25, **kw}
    args = config(
        tmp_path,
        output_dir=str(tmp_path / out),
        **RESUME_RUN,
        kd_data_selection=True,
        kd_select_top_k=128,
        remove_unused_columns=False,
        kd_select_cache_dir=str(tmp_path / "scores"),
        per_device_eval_batch_size=8,
        **kw,
    )
    trainer = tiny_salt_trainer(tokenizer, teacher_dir, args, ds, data_collator=collator)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, collator.row_ids


def test_kd_stage_batches_come_from_the_selection_and_resume_is_exact(
    tmp_path, tokenizer, token_stream, teacher, teacher_loads
):
    loads = teacher_loads
    teacher_dir = save_teacher(teacher, tokenizer, tmp_path / "teacher")
    ds = rows_dataset(token_stream, 24)
    full, seen = ds_run(tmp_path, tokenizer, ds, teacher_dir, "full", save_strategy="steps", save_steps=2)
    selection = full.kd_selection
    selected = set(selection.selected.tolist())
    assert len(selected) == 6  # 0.25 of 24
    # the selected sequences are the top-scoring ones of the teacher's scores
    scores = selection.scores
    assert min(scores[list(selected)]) >= max(s for i, s in enumerate(scores) if i not in selected and np.isfinite(s))
    # 6 steps x 4 sequences: the 12 samples of the 3 KD steps only from the selection, then the whole set
    assert len(seen) == 24
    assert set(seen[:12]) <= selected and len(set(seen[:12])) == 6  # the pool of 6 is repeated (two passes)
    assert not set(seen[12:]) <= selected and len(set(seen[12:])) == 12  # a pass over the whole set begins
    kd = [h["kd_weight"] for h in full.state.log_history if "kd_weight" in h]
    assert kd == [0.5] * 3 + [0.0] * 3
    assert len(loads) == 1  # loaded once, for scoring and the KD stage

    for ckpt, step in [("checkpoint-2", 2), ("checkpoint-4", 4)]:  # inside the KD stage, and after it
        loads.clear()
        resumed, seen_resumed = ds_run(
            tmp_path, tokenizer, ds, teacher_dir, "full", resume=str(tmp_path / "full" / ckpt)
        )
        assert seen_resumed == seen[4 * step :]  # the rest of the same stream
        # the same operations on state restored bit for bit (see test_trainer's resume test): equal, not close
        assert torch.equal(flat_params(resumed.model), flat_params(full.model))
        # the scores come from the cache; past n_KD the teacher is not even loaded
        assert len(loads) == (1 if step < 3 else 0)


def test_selection_run_without_teacher_or_weight_is_a_plain_run(tmp_path, tokenizer, token_stream):
    ds = rows_dataset(token_stream, 8)
    args = config(
        tmp_path,
        max_steps=2,
        per_device_train_batch_size=2,
        kd_data_selection=True,
        kd_weight=0.0,
        remove_unused_columns=False,
    )
    trainer = SALTTrainer(
        model=make_llama(len(tokenizer), 32, 2, seed=0), args=args, train_dataset=ds, data_collator=RecordingCollator()
    )
    trainer.train()
    assert trainer.kd_selection is None


def test_selection_config_errors(tmp_path):
    base = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="max_steps > 0"):
        SALTConfig(**base, kd_data_selection=True)
    with pytest.raises(ValueError, match="kd_select_fraction=1.5"):
        SALTConfig(**base, max_steps=4, kd_select_fraction=1.5)
    with pytest.raises(ValueError, match="kd_select_drop_top=0.6"):
        SALTConfig(**base, max_steps=4, kd_select_fraction=0.5, kd_select_drop_top=0.6)
    with pytest.raises(ValueError, match="kd_select_top_k=0"):
        SALTConfig(**base, max_steps=4, kd_select_top_k=0)
    with pytest.raises(ValueError, match="teacher_placement='zero3'"):
        SALTConfig(**base, max_steps=4, kd_data_selection=True, teacher_placement="zero3")


def test_scoring_a_seeded_subset_selects_from_it(tmp_path, tokenizer, token_stream, teacher):
    teacher_dir = save_teacher(teacher, tokenizer, tmp_path / "teacher")
    ds = rows_dataset(token_stream, 24)
    trainer, seen = ds_run(
        tmp_path, tokenizer, ds, teacher_dir, "pool", kd_select_max_sequences=10, kd_select_fraction=0.5
    )
    selection = trainer.kd_selection
    scored = np.flatnonzero(~np.isnan(selection.scores))
    assert scored.size <= 10 and np.isnan(selection.scores).sum() >= 14  # only the pool of 10 was scored
    (cache,) = (tmp_path / "scores").iterdir()
    assert json.loads((cache / "meta.json").read_text())["sequences"] == 10
    selected = set(selection.selected.tolist())
    assert len(selected) == 5 and selected <= set(scored.tolist())  # half of the pool, never outside it
    assert set(seen[:12]) <= selected
    # the pool is a function of the seed: a second run reads the same cache entry
    again, _ = ds_run(
        tmp_path, tokenizer, ds, teacher_dir, "pool2", kd_select_max_sequences=10, kd_select_fraction=0.5
    )
    assert again.kd_selection.selected.tolist() == selection.selected.tolist()
    assert len(list((tmp_path / "scores").iterdir())) == 1
    with pytest.raises(ValueError, match="kd_select_max_sequences=0"):
        SALTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=4, kd_select_max_sequences=0)
