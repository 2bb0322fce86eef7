"""Stored teacher targets (salt_hf.targets): the sparse forward-KL loss against naive float64 references, the
unbiasedness of the sampled form, the store's writing, resuming and refusals, and SALTTrainer reading a store."""

from __future__ import annotations

import math

import pytest
import torch
from fixtures import config, dataset, flat_params, make_llama, one_sgd_step_config, save_teacher
from torch.utils.data import IterableDataset

from salt_hf import SALTConfig, SALTTrainer
from salt_hf.losses import SparseTargets, fused_linear_salt_loss, reference_salt_loss, salt_loss
from salt_hf.selection.cache import path_fingerprint
from salt_hf.targets import (
    Manifest,
    StoreError,
    TargetStore,
    row_targets,
    row_uniforms,
    rows_fingerprint,
    sample_ids,
    tokenizer_fingerprint,
    weights_of,
    write_store,
)

# ---- the loss against naive references --------------------------------------------------------------------------


def full_targets(teacher_logits: torch.Tensor, labels: torch.Tensor, vocab: int, tau: float) -> SparseTargets:
    """Top-K targets with K = the vocabulary: the teacher's whole tempered distribution, as a store would hold it."""
    rows = [
        row_targets(t[:, :vocab], lab, form="topk", k=vocab, temperature=tau)
        for t, lab in zip(teacher_logits, labels, strict=True)
    ]
    ids = torch.cat([r.ids for r in rows])
    return SparseTargets(
        ids,
        weights_of("topk", torch.cat([r.values for r in rows])),
        torch.cat([r.teacher_nll for r in rows]),
        torch.cat([r.offset for r in rows]),
    )


def naive_sparse_loss(student, labels, targets: SparseTargets, nll_weight, kd_weight, tau, vocab):
    """(1 - w) NLL + w tau^2 (sum_k w_k (-log q_tau(x_k)) + offset) in float64 with autograd, whole tensors."""
    s = student.double().reshape(-1, student.shape[-1])
    labels = labels.reshape(-1)
    mask = labels != -100
    log_q1 = torch.log_softmax(s, -1)
    nll = torch.where(mask, -log_q1.gather(-1, labels.clamp(min=0)[:, None]).squeeze(-1), 0.0).sum()
    log_q = torch.log_softmax(s[:, :vocab] / tau, -1)
    cross = -(targets.weights.double() * log_q.gather(-1, targets.ids)).sum(-1)
    kd = torch.where(mask, cross + targets.offset.double(), 0.0).sum() * tau * tau
    return nll_weight * nll + kd_weight * kd, kd


CASES = [  # (batch, length, student vocab, KD vocab, tau)
    (3, 17, 41, 41, 1.0),
    (3, 17, 41, 41, 2.0),
    (2, 9, 45, 41, 1.0),  # the student's embedding padded beyond the real vocabulary
    (2, 9, 45, 41, 0.7),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_targets_covering_the_vocabulary_give_the_online_loss_and_gradients(case):
    b, n, v_s, vocab, tau = case
    torch.manual_seed(0)
    student = torch.randn(b, n, v_s, dtype=torch.float64)
    teacher = 3 * torch.randn(b, n, vocab, dtype=torch.float64)
    labels = torch.randint(0, vocab, (b, n))
    labels[0, :4] = -100
    targets = full_targets(teacher, labels, vocab, tau)
    kw = dict(nll_weight=0.3, kd_weight=0.7, temperature=tau, vocab_size=vocab)
    ref_student = student.clone().requires_grad_()
    ref = reference_salt_loss(ref_student, labels, teacher, **kw)
    (ref_grad,) = torch.autograd.grad(ref.loss, ref_student)
    naive_student = student.clone().requires_grad_()
    naive, _ = naive_sparse_loss(naive_student, labels, targets, 0.3, 0.7, tau, vocab)
    (naive_grad,) = torch.autograd.grad(naive, naive_student)
    assert naive.item() == pytest.approx(ref.loss.item(), rel=1e-6)  # the naive sparse form is the KD loss at K = V
    # the fused loss on logits and on hidden states, fp32, against the float64 online reference
    logits = student.float().requires_grad_()
    out = salt_loss(logits, labels, teacher_targets=targets, chunk_size=7, **kw)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    assert float(out.kd) == pytest.approx(float(ref.kd), rel=1e-6, abs=1e-6)
    assert float(out.teacher_nll) == pytest.approx(float(ref.teacher_nll), rel=1e-6)
    assert (logits.grad.double() - ref_grad).abs().max() <= 1e-6
    assert (naive_grad - ref_grad).abs().max() <= 1e-6  # the stored weights are fp32
    hidden = torch.randn(b, n, 8, dtype=torch.float64)
    weight = torch.linalg.lstsq(hidden.reshape(-1, 8), student.reshape(-1, v_s)).solution.T.contiguous()
    z = (hidden @ weight.T).float()
    h, w = hidden.float().requires_grad_(), weight.float().requires_grad_()
    fused = fused_linear_salt_loss(h, w, labels, teacher_targets=targets, chunk_size=5, **kw)
    fused.loss.backward()
    zz = z.double().requires_grad_()
    ref_z = reference_salt_loss(zz, labels, teacher, **kw)
    (gz,) = torch.autograd.grad(ref_z.loss, zz)
    assert fused.loss.item() == pytest.approx(ref_z.loss.item(), rel=1e-6)
    gz = gz.reshape(-1, v_s)
    assert (h.grad.double().reshape(-1, 8) - gz @ weight).abs().max() <= 1e-5
    assert (w.grad.double() - gz.T @ hidden.reshape(-1, 8)).abs().max() <= 1e-5


def test_pinned_sparse_value():
    # uniform student over 3 tokens; targets ids (1, 2) with counts (1, 1), offset -0.5: log 3 - 0.5
    targets = SparseTargets(
        torch.tensor([[1, 2]]), torch.tensor([[0.5, 0.5]]), torch.tensor([0.0]), torch.tensor([-0.5])
    )
    out = salt_loss(torch.zeros(1, 3), torch.tensor([0]), teacher_targets=targets, nll_weight=0.0, kd_weight=1.0)
    assert float(out.kd) == pytest.approx(math.log(3) - 0.5, abs=1e-7)


def test_all_tokens_ignored_give_zero_and_a_finite_gradient():
    targets = SparseTargets(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2), torch.ones(4), torch.ones(4))
    logits = torch.randn(4, 7, requires_grad=True)
    out = salt_loss(logits, torch.full((4,), -100), teacher_targets=targets, nll_weight=0.5, kd_weight=0.5)
    out.loss.backward()
    assert out.loss.item() == 0.0 and float(out.teacher_nll) == 0.0 and torch.equal(logits.grad, torch.zeros(4, 7))


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
def test_other_divergences_are_refused(divergence):
    targets = SparseTargets(torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="forward KL"):
        salt_loss(
            torch.randn(2, 5), torch.tensor([1, 2]), teacher_targets=targets, kd_weight=0.5, divergence=divergence
        )
    with pytest.raises(ValueError, match="kd_divergence"):
        SALTConfig(output_dir="x", teacher_targets="store", kd_divergence=divergence)


# ---- the sampled form is unbiased; the top-K form is not ------------------------------------------------------------

N_POS, VOCAB, DRAWS, K = 5, 9, 4000, 4


def kd_gradients(student: torch.Tensor, targets: SparseTargets) -> torch.Tensor:
    """The KD term's gradient w.r.t. the student's logits, per row ([rows, V]): the loss is a sum over rows."""
    logits = student.clone().requires_grad_()
    salt_loss(
        logits, torch.zeros(student.shape[0], dtype=torch.long), teacher_targets=targets, nll_weight=0.0, kd_weight=1.0
    ).loss.backward()
    return logits.grad


def test_sampled_kd_gradient_is_unbiased_and_top_k_is_not():
    torch.manual_seed(0)
    student, teacher = torch.randn(N_POS, VOCAB), 2 * torch.randn(N_POS, VOCAB)
    exact = torch.softmax(student, -1) - torch.softmax(teacher, -1)  # d KL(p || q) / dz = q - p
    log_p = torch.log_softmax(teacher.double(), -1)
    draws = [sample_ids(log_p, row_uniforms(seed=0, row=d, length=N_POS, k=K)) for d in range(DRAWS)]
    ids = torch.cat([i for i, _ in draws])
    weights = weights_of("sampled", torch.cat([c for _, c in draws]).to(torch.uint8))
    targets = SparseTargets(ids, weights, torch.zeros(len(ids)), torch.zeros(len(ids)))
    grads = kd_gradients(student.repeat(DRAWS, 1), targets).view(DRAWS, N_POS, VOCAB).double()
    mean, stderr = grads.mean(0), grads.std(0) / math.sqrt(DRAWS)
    z = (mean - exact) / stderr.clamp_min(1e-12)
    # 45 coordinates, each within 4.5 standard errors of the exact gradient: a false alarm has probability < 3e-4
    assert z.abs().max() < 4.5, z
    # the top-K target (K = 4 of 9, renormalised) is off by many standard errors of the same experiment
    top = row_targets(teacher, torch.zeros(N_POS, dtype=torch.long), form="topk", k=K, temperature=1.0)
    top_targets = SparseTargets(top.ids, weights_of("topk", top.values), torch.zeros(N_POS), torch.zeros(N_POS))
    bias = kd_gradients(student, top_targets).double() - exact
    assert (bias.abs() / stderr.clamp_min(1e-12)).max() > 20


def test_draws_are_distinct_sorted_ids_with_counts_summing_to_k():
    log_p = torch.log_softmax(torch.randn(6, 30, dtype=torch.float64), -1)
    ids, counts = sample_ids(log_p, row_uniforms(0, 7, 6, 16))
    assert torch.equal(counts.sum(-1), torch.full((6,), 16))
    used = counts > 0
    for r in range(6):
        row = ids[r][used[r]]
        assert torch.equal(row, row.unique()) and not ids[r][~used[r]].any()
    again, _ = sample_ids(log_p, row_uniforms(0, 7, 6, 16))
    other, _ = sample_ids(log_p, row_uniforms(0, 8, 6, 16))
    assert torch.equal(ids, again) and not torch.equal(ids, other)


# ---- the store ------------------------------------------------------------------------------------------------------


def manifest_for(ds, tokenizer, teacher_dir, form="sampled", k=8, temperature=1.0, rows=None, rows_per_shard=3):
    rows = len(ds) if rows is None else rows
    return Manifest(
        form=form,
        k=k,
        temperature=temperature,
        seed=0,
        vocab_size=len(tokenizer),
        seq_length=len(ds[0]["input_ids"]),
        rows=rows,
        dataset_rows=len(ds),
        rows_per_shard=rows_per_shard,
        data_fingerprint=rows_fingerprint(ds, rows),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        teacher_fingerprint=path_fingerprint(teacher_dir),
        teacher=str(teacher_dir),
        dtype="float32",
    )


@pytest.fixture
def teacher_dir(tmp_path, teacher, tokenizer):
    return save_teacher(teacher, tokenizer, tmp_path / "teacher")


def make_store(path, teacher, ds, tokenizer, teacher_dir, **kw):
    return write_store(teacher, ds, path, manifest_for(ds, tokenizer, teacher_dir, **kw), batch_size=2, device="cpu")


def test_store_holds_the_teachers_targets_row_by_row(tmp_path, teacher, tokenizer, token_stream, teacher_dir):
    ds = dataset(token_stream, 7)
    make_store(tmp_path / "s", teacher, ds, tokenizer, teacher_dir, form="topk", k=5)
    store = TargetStore(tmp_path / "s")
    got = store.read([4, 1])
    ids = torch.tensor(ds[4]["input_ids"])[None]
    with torch.no_grad():
        logits = teacher(input_ids=ids).logits[0]
    want = row_targets(
        logits, torch.nn.functional.pad(ids[0, 1:], (0, 1), value=-100), form="topk", k=5, temperature=1.0
    )
    assert torch.equal(got["ids"][0], want.ids)
    assert torch.allclose(got["values"][0], want.values, atol=1e-5)
    assert torch.allclose(got["teacher_nll"][0], want.teacher_nll, atol=1e-5) and got["teacher_nll"][0, -1] == 0.0
    assert store.bytes_per_token() > 0 and len(store.manifest.shards) == 3  # 7 rows in shards of 3


def test_a_killed_precompute_resumes_to_the_same_store(
    tmp_path, teacher, tokenizer, token_stream, teacher_dir, monkeypatch
):
    import salt_hf.targets.writer as writer

    ds = dataset(token_stream, 8)
    make_store(tmp_path / "whole", teacher, ds, tokenizer, teacher_dir)
    real, written = writer.write_shard, []

    def dies_after_two(folder, start, tensors):
        if len(written) == 2:
            raise KeyboardInterrupt  # killed between shards
        written.append(start)
        return real(folder, start, tensors)

    monkeypatch.setattr(writer, "write_shard", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        make_store(tmp_path / "cut", teacher, ds, tokenizer, teacher_dir)
    with pytest.raises(StoreError, match="not a complete store"):
        TargetStore(tmp_path / "cut")  # nothing half-written is read
    monkeypatch.setattr(writer, "write_shard", real)
    make_store(tmp_path / "cut", teacher, ds, tokenizer, teacher_dir)
    assert TargetStore(tmp_path / "cut").manifest.shards == TargetStore(tmp_path / "whole").manifest.shards


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_precompute_refuses_a_folder_holding_something_else(tmp_path, teacher, tokenizer, token_stream, teacher_dir):
    ds = dataset(token_stream, 4)
    make_store(tmp_path / "s", teacher, ds, tokenizer, teacher_dir)
    before = snapshot(tmp_path / "s")
    with pytest.raises(StoreError, match="other settings.*temperature"):
        make_store(tmp_path / "s", teacher, ds, tokenizer, teacher_dir, temperature=2.0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="other files"):
        make_store(tmp_path / "other", teacher, ds, tokenizer, teacher_dir)
    assert snapshot(tmp_path / "s") == before and snapshot(tmp_path / "other") == {"notes.txt": b"mine"}
    make_store(tmp_path / "s", teacher, ds, tokenizer, teacher_dir)  # the same store again: nothing to do
    assert snapshot(tmp_path / "s") == before


# ---- SALTTrainer with a store ---------------------------------------------------------------------------------------


def step_weights(tmp_path, name, tokenizer, ds, teacher=None, implementation="logits", batch=4, accum=1, **kw):
    args = one_sgd_step_config(
        str(tmp_path / name), batch, accum, use_cpu=True, loss_implementation=implementation, **kw
    )
    student = make_llama(len(tokenizer), 32, 2, seed=0)
    trainer = SALTTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=ds, processing_class=tokenizer
    )
    trainer.train()
    return flat_params(trainer.model), trainer


@pytest.mark.parametrize("implementation", ["logits", "fused_linear"])
def test_one_step_with_a_full_store_equals_the_online_teacher(
    tmp_path, teacher, tokenizer, token_stream, teacher_dir, implementation
):
    ds = dataset(token_stream, 4, supervised=[24, 10, 17, 3])
    make_store(tmp_path / "s", teacher, ds, tokenizer, teacher_dir, form="topk", k=len(tokenizer))
    online, _ = step_weights(tmp_path, "online", tokenizer, ds, teacher_dir, implementation)
    stored, trainer = step_weights(
        tmp_path, "stored", tokenizer, ds, None, implementation, teacher_targets=str(tmp_path / "s")
    )
    split, _ = step_weights(
        tmp_path, "split", tokenizer, ds, None, implementation, 2, 2, teacher_targets=str(tmp_path / "s")
    )
    assert (stored - online).abs().max() <= 1e-6 and (split - online).abs().max() <= 1e-6
    assert trainer.teacher.module is None and trainer.fused_head.implementation == implementation
    kd = [h["kd_loss"] for h in trainer.state.log_history if "kd_loss" in h]
    assert kd and kd[0] > 1e-3


def test_sampled_store_trains_and_its_kd_is_near_the_online_value(
    tmp_path, teacher, tokenizer, token_stream, teacher_dir
):
    ds = dataset(token_stream, 4)
    make_store(tmp_path / "s", teacher, ds, tokenizer, teacher_dir, k=64)
    _, online = step_weights(tmp_path, "online", tokenizer, ds, teacher_dir)
    _, stored = step_weights(tmp_path, "stored", tokenizer, ds, None, teacher_targets=str(tmp_path / "s"))
    (a,), (b,) = ([h for h in t.state.log_history if "kd_loss" in h] for t in (online, stored))
    assert b["teacher_nll"] == pytest.approx(a["teacher_nll"], rel=1e-5)  # the stored NLL is the online one
    assert b["kd_loss"] == pytest.approx(a["kd_loss"], rel=0.1)  # an estimate from 64 draws per token


def test_auto_stop_decides_the_same_step_with_a_store_holding_the_same_nlls(
    tmp_path, teacher, tokenizer, token_stream, teacher_dir
):
    ds = dataset(token_stream, 24)
    make_store(tmp_path / "s", teacher, ds, tokenizer, teacher_dir, form="topk", k=len(tokenizer), rows_per_shard=8)
    auto = dict(max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=3e-3)
    auto |= dict(kd_steps="auto", kd_auto_window=3, kd_auto_min_ratio=0.0, kd_auto_max_ratio=1.0)
    runs = {}
    for name, kw in {"online": {}, "stored": {"teacher_targets": str(tmp_path / "s")}}.items():
        args = config(tmp_path, output_dir=str(tmp_path / name), **auto, **kw)
        student = make_llama(len(tokenizer), 32, 2, seed=0)
        teacher_arg = teacher_dir if name == "online" else None
        trainer = SALTTrainer(
            model=student, teacher_model=teacher_arg, args=args, train_dataset=ds, processing_class=tokenizer
        )
        trainer.train()
        runs[name] = trainer
    (a,), (b,) = ([h for h in t.state.log_history if "kd_stop_step" in h] for t in runs.values())
    assert a["kd_stop_step"] == b["kd_stop_step"] == runs["stored"].kd_steps
    assert b["kd_stop_teacher_nll"] == pytest.approx(a["kd_stop_teacher_nll"], rel=1e-6)
    assert b["kd_stop_student_nll"] == pytest.approx(a["kd_stop_student_nll"], rel=1e-6)


def test_resumed_run_with_a_store_equals_the_uninterrupted_one(
    tmp_path, teacher, tokenizer, token_stream, teacher_dir
):
    ds = dataset(token_stream, 24)
    make_store(tmp_path / "s", teacher, ds, tokenizer, teacher_dir, rows_per_shard=8)
    run = dict(
        max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=2, kd_steps=4, learning_rate=3e-3
    )
    run |= dict(teacher_targets=str(tmp_path / "s"), save_strategy="steps", save_steps=3)

    def train(out, resume=None, steps=6):
        args = config(tmp_path, output_dir=str(tmp_path / out), **{**run, "max_steps": 6})
        trainer = SALTTrainer(
            model=make_llama(len(tokenizer), 32, 2, seed=0), args=args, train_dataset=ds, processing_class=tokenizer
        )
        if steps < 6:
            from transformers import TrainerCallback

            class StopAt(TrainerCallback):
                def on_step_end(self, args, state, control, **kwargs):
                    control.should_training_stop = state.global_step >= steps

            trainer.add_callback(StopAt())
        trainer.train(resume_from_checkpoint=resume)
        return flat_params(trainer.model)

    whole = train("whole")
    train("cut", steps=3)
    resumed = train("cut", resume=str(tmp_path / "cut" / "checkpoint-3"))
    assert (resumed - whole).abs().max() <= 1e-6


# ---- refusals before training ---------------------------------------------------------------------------------------


def refused(tmp_path, tokenizer, ds, store, **kw):
    args = config(tmp_path, output_dir=str(tmp_path / "never"), max_steps=2, teacher_targets=str(store), **kw)
    with pytest.raises(StoreError) as err:
        SALTTrainer(
            model=make_llama(len(tokenizer), 32, 2, seed=0),
            args=args,
            train_dataset=ds,
            processing_class=tokenizer,
            teacher_model=kw.pop("teacher", None),
        )
    assert not (tmp_path / "never").exists()
    return str(err.value)


class Stream(IterableDataset):
    def __iter__(self):
        yield from ()


def test_a_mismatched_or_damaged_store_is_refused_before_training(
    tmp_path, teacher, tokenizer, token_stream, teacher_dir, texts
):
    from salt_hf.data import train_bpe_tokenizer

    ds = dataset(token_stream, 6)
    s = tmp_path / "s"
    make_store(s, teacher, ds, tokenizer, teacher_dir, rows_per_shard=2)
    assert "other training data" in refused(tmp_path, tokenizer, dataset(token_stream, 6, offset=5), s)
    assert "other training data" in refused(tmp_path, tokenizer, dataset(token_stream, 6, seq=20), s)  # packing
    assert "other training data" in refused(tmp_path, tokenizer, dataset(token_stream, 7), s)  # a row more
    make_store(tmp_path / "part", teacher, ds, tokenizer, teacher_dir, rows=4)
    assert "covers 4 of the training set's 6" in refused(tmp_path, tokenizer, ds, tmp_path / "part")
    assert "temperature 1.0" in refused(tmp_path, tokenizer, ds, s, kd_temperature=2.0)
    assert "not a streamed" in refused(tmp_path, tokenizer, Stream(), s)
    other_tok = train_bpe_tokenizer(texts[:2], vocab_size=len(tokenizer))
    assert "another tokenizer" in refused(tmp_path, other_tok, ds, s)
    other_teacher = save_teacher(make_llama(len(tokenizer), 16, 1, seed=7), tokenizer, tmp_path / "t2")
    args = config(tmp_path, output_dir=str(tmp_path / "never"), max_steps=2, teacher_targets=str(s))
    with pytest.raises(StoreError, match="another teacher"):
        SALTTrainer(
            model=make_llama(len(tokenizer), 32, 2, seed=0),
            teacher_model=other_teacher,
            args=args,
            train_dataset=ds,
            processing_class=tokenizer,
        )
    shard = s / TargetStore(s).manifest.shards[1]["file"]
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    assert "cut or replaced" in refused(tmp_path, tokenizer, ds, s)
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert "corrupt" in refused(tmp_path, tokenizer, ds, s)
    (s / "manifest.json").unlink()
    assert "not a complete store" in refused(tmp_path, tokenizer, ds, s)


@pytest.mark.parametrize(
    "field,value,match",
    [("kd_data_selection", True, "kd_data_selection"), ("seq_warmup_steps", 4, "seq_warmup_steps")],
)
def test_config_refuses_what_stored_targets_cannot_serve(field, value, match):
    with pytest.raises(ValueError, match=match):
        SALTConfig(output_dir="x", teacher_targets="store", max_steps=10, **{field: value})
