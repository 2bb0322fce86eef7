"""salt_hf.losses against naive float64 references written out below: values AND gradients, every divergence."""

from __future__ import annotations

import math

import pytest
import torch

from salt_hf.losses import SALTLossOutput, kd_loss, nll_loss, salt_loss

B, T, V = 3, 17, 41  # odd on purpose: no dimension is a power of two or a multiple of a chunk
N = B * T
IGNORE = -100

# (divergence, beta): the three divergences, JSD at three mixture weights
CASES = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9)]
CASE_IDS = [d if d != "jsd" else f"jsd-{b}" for d, b in CASES]
ALL_CASES = CASES + [("jsd", 0.0), ("jsd", 1.0)]
ALL_IDS = CASE_IDS + ["jsd-0.0", "jsd-1.0"]

# value: relative; gradient: absolute, relative to the largest entry of the reference gradient.
# bf16 inputs are upcast inside, so the value stays close; the gradient is returned in bf16 (8 mantissa bits).
TOL = {
    torch.float32: {"value": 1e-5, "grad": 1e-5},
    torch.bfloat16: {"value": 1e-4, "grad": 1e-2},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.py)


# ---- naive references (float64, plain torch) --------------------------------------------------------------------


def ref_kd(student, teacher, labels, divergence="forward_kl", tau=1.0, beta=0.5, ignore_index=IGNORE):
    """Sum over supervised tokens of tau^2 * D(p || q), p = softmax(teacher / tau), q = softmax(student / tau)."""
    log_q = torch.log_softmax(student.double() / tau, dim=-1)
    log_p = torch.log_softmax(teacher.double() / tau, dim=-1)
    q, p = log_q.exp(), log_p.exp()
    if divergence == "forward_kl" or (divergence == "jsd" and beta == 0.0):
        per_token = (p * (log_p - log_q)).sum(-1)  # KL(p || q)
    elif divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
        per_token = (q * (log_q - log_p)).sum(-1)  # KL(q || p)
    elif divergence == "jsd":
        # GKD (https://arxiv.org/abs/2306.13649) Eq. 1: beta KL(p || m) + (1 - beta) KL(q || m)
        m = beta * p + (1.0 - beta) * q
        kl_pm = (p * (log_p - m.log())).sum(-1)
        kl_qm = (q * (log_q - m.log())).sum(-1)
        per_token = beta * kl_pm + (1.0 - beta) * kl_qm
    else:
        raise AssertionError(divergence)
    mask = labels != ignore_index
    return torch.where(mask, per_token, 0.0).sum() * tau**2


def ref_nll(logits, labels, ignore_index=IGNORE):
    log_q = torch.log_softmax(logits.double(), dim=-1)
    total = torch.zeros((), dtype=torch.float64)
    for row, label in zip(log_q.reshape(-1, log_q.shape[-1]), labels.reshape(-1).tolist(), strict=True):
        if label != ignore_index:
            total = total - row[label]
    return total


def ref_value_and_grad(fn, student, *args, **kwargs):
    """`fn` on the float64 upcast of `student` (exactly its values, whatever its dtype) and d fn / d student."""
    s64 = student.detach().double().requires_grad_(True)
    value = fn(s64, *args, **kwargs)
    (grad,) = torch.autograd.grad(value, s64)
    return value.detach(), grad


# ---- inputs ------------------------------------------------------------------------------------------------------


def logits(seed, scale, vocab=V, dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    out = (scale * torch.randn(B, T, vocab, generator=g, dtype=torch.float64)).to(dtype)
    return out.requires_grad_(requires_grad)


def student_logits(dtype=torch.float32, vocab=V):
    return logits(1, 2.0, vocab, dtype, requires_grad=True)


def teacher_logits(dtype=torch.float32, vocab=V):
    # another seed and scale: KD per token is O(1), far above fp32 rounding
    return logits(2, 3.0, vocab, dtype)


def make_labels(vocab=V, ignore_index=IGNORE, frac_ignored=0.3):
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, vocab, (B, T), generator=g)
    ignored = torch.rand(B, T, generator=g) < frac_ignored
    ignored[0, 0] = True
    ignored[0, 1] = False
    ignored[2, :] = True  # a whole sequence unsupervised
    labels[ignored] = ignore_index
    return labels


def assert_value(actual, expected, rel):
    assert actual.dim() == 0
    assert actual.dtype == torch.float32
    assert torch.isfinite(actual)
    err = abs(actual.double().item() - expected.item())
    assert err <= rel * max(abs(expected.item()), 1e-12), (actual.item(), expected.item(), err)


def assert_grad(actual, expected, rel, dtype):
    assert actual.dtype == dtype
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(actual.double(), expected, rtol=rel, atol=rel * scale)


def kd_grad(student, teacher, labels, **kwargs):
    value = kd_loss(student, teacher, labels, **kwargs)
    (grad,) = torch.autograd.grad(value, student)
    return value.detach(), grad


# ---- 1. every divergence against the reference -------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("divergence", "beta"), CASES, ids=CASE_IDS)
def test_kd_matches_reference(divergence, beta, dtype, tau):
    s, t, labels = student_logits(dtype), teacher_logits(dtype), make_labels()
    value, grad = kd_grad(s, t, labels, divergence=divergence, temperature=tau, beta=beta)
    ref, ref_g = ref_value_and_grad(ref_kd, s, t, labels, divergence, tau, beta)
    assert ref.item() > 1.0  # far above rounding
    assert_value(value, ref, TOL[dtype]["value"])
    assert_grad(grad, ref_g, TOL[dtype]["grad"], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_nll_matches_reference(dtype):
    s, labels = student_logits(dtype), make_labels()
    value = nll_loss(s, labels)
    (grad,) = torch.autograd.grad(value, s)
    ref, ref_g = ref_value_and_grad(ref_nll, s, labels)
    assert_value(value, ref, TOL[dtype]["value"])
    assert_grad(grad, ref_g, TOL[dtype]["grad"], dtype)
    # and against torch's own cross entropy (a sum, not a mean)
    ce = torch.nn.functional.cross_entropy(s.detach().double().reshape(N, V), labels.reshape(N), reduction="sum")
    assert_value(value, ce, TOL[dtype]["value"])


def test_loss_is_a_sum_over_supervised_tokens():
    """Two copies of a batch give twice the loss: the loss is a sum, not a mean."""
    s, t, labels = student_logits(), teacher_logits(), make_labels()
    one = kd_loss(s, t, labels)
    two = kd_loss(torch.cat([s, s]), torch.cat([t, t]), torch.cat([labels, labels]))
    torch.testing.assert_close(two, 2 * one, rtol=1e-6, atol=0)
    torch.testing.assert_close(nll_loss(torch.cat([s, s]), torch.cat([labels, labels])), 2 * nll_loss(s, labels))


def test_flat_and_batched_inputs_agree():
    s, t, labels = student_logits(), teacher_logits(), make_labels()
    a = salt_loss(s, labels, t, nll_weight=0.6, kd_weight=0.4, divergence="jsd", temperature=2.0)
    b = salt_loss(
        s.reshape(N, V),
        labels.reshape(N),
        t.reshape(N, V),
        nll_weight=0.6,
        kd_weight=0.4,
        divergence="jsd",
        temperature=2.0,
    )
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)


# ---- 2. ignored tokens -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("divergence", "beta"), ALL_CASES, ids=ALL_IDS)
def test_all_tokens_ignored(divergence, beta, dtype, tau):
    s, t = student_logits(dtype), teacher_logits(dtype)
    labels = torch.full((B, T), IGNORE)
    out = salt_loss(
        s, labels, t, nll_weight=0.5, kd_weight=0.5, divergence=divergence, beta=beta, temperature=tau, chunk_size=5
    )
    assert out.loss.item() == 0.0 and out.nll.item() == 0.0 and out.kd.item() == 0.0
    assert out.teacher_nll.item() == 0.0
    assert out.num_tokens.item() == 0
    (grad,) = torch.autograd.grad(out.loss, s)
    assert torch.isfinite(grad).all()
    assert (grad == 0).all()

    value, grad = kd_grad(s, t, labels, divergence=divergence, beta=beta, temperature=tau)
    assert value.item() == 0.0
    assert torch.isfinite(grad).all() and (grad == 0).all()

    value = nll_loss(s, labels)
    (grad,) = torch.autograd.grad(value, s)
    assert value.item() == 0.0
    assert torch.isfinite(grad).all() and (grad == 0).all()


def test_ignored_tokens_get_no_gradient_and_do_not_count():
    s, t, labels = student_logits(), teacher_logits(), make_labels()
    ignored = labels == IGNORE
    out = salt_loss(s, labels, t, nll_weight=0.5, kd_weight=0.5)
    (grad,) = torch.autograd.grad(out.loss, s)
    assert (grad[ignored] == 0).all()
    assert (grad[~ignored].abs().sum(-1) > 0).all()
    # changing the logits of ignored tokens changes nothing
    s2 = s.detach().clone()
    s2[ignored] = 100.0 * torch.randn_like(s2[ignored])
    out2 = salt_loss(s2, labels, t, nll_weight=0.5, kd_weight=0.5)
    torch.testing.assert_close(out2.loss, out.loss.detach())


@pytest.mark.parametrize("ignore_index", [-1, 3])
@pytest.mark.parametrize(("divergence", "beta"), [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5)])
def test_custom_ignore_index(ignore_index, divergence, beta):
    s, t = student_logits(), teacher_logits()
    labels = make_labels(ignore_index=ignore_index)
    assert (labels == ignore_index).any() and (labels != ignore_index).any()
    value, grad = kd_grad(s, t, labels, divergence=divergence, beta=beta, temperature=2.0, ignore_index=ignore_index)
    ref, ref_g = ref_value_and_grad(ref_kd, s, t, labels, divergence, 2.0, beta, ignore_index)
    assert_value(value, ref, TOL[torch.float32]["value"])
    assert_grad(grad, ref_g, TOL[torch.float32]["grad"], torch.float32)

    value = nll_loss(s, labels, ignore_index=ignore_index)
    (grad,) = torch.autograd.grad(value, s)
    ref, ref_g = ref_value_and_grad(ref_nll, s, labels, ignore_index)
    assert_value(value, ref, TOL[torch.float32]["value"])
    assert_grad(grad, ref_g, TOL[torch.float32]["grad"], torch.float32)
    # a token id as ignore_index (e.g. a pad id): exactly the tokens carrying it are left out
    if ignore_index == 3:
        assert salt_loss(s, labels, ignore_index=3).num_tokens.item() == (labels != 3).sum().item()


# ---- 3. chunking does not change anything ------------------------------------------------------------------------

# (divergence, beta, tau): the fused forward-KL path (tau 1) and the general path
CHUNK_CASES = [("forward_kl", 0.5, 1.0), ("jsd", 0.5, 2.0), ("reverse_kl", 0.5, 1.0)]


@pytest.mark.parametrize("chunk_size", [1, 5, None, 10 * N], ids=["1", "5", "auto", "gtN"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("divergence", "beta", "tau"), CHUNK_CASES, ids=[c[0] for c in CHUNK_CASES])
def test_chunked_equals_unchunked(chunk_size, dtype, divergence, beta, tau):
    s, t, labels = student_logits(dtype), teacher_logits(dtype), make_labels()
    kw = dict(nll_weight=0.7, kd_weight=0.3, divergence=divergence, beta=beta, temperature=tau)
    full = salt_loss(s, labels, t, chunk_size=N, **kw)
    (full_g,) = torch.autograd.grad(full.loss, s)
    chunked = salt_loss(s, labels, t, chunk_size=chunk_size, **kw)
    (chunked_g,) = torch.autograd.grad(chunked.loss, s)
    assert full.teacher_nll.item() > 1.0
    for name in ("loss", "nll", "kd", "teacher_nll"):
        torch.testing.assert_close(getattr(chunked, name), getattr(full, name), rtol=1e-6, atol=0, msg=name)
    assert chunked.num_tokens.item() == full.num_tokens.item()
    # per-token rows are computed identically in every chunking, up to a last-bit difference of the kernels
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(chunked_g, full_g, rtol=tol, atol=tol * full_g.abs().max().item())


# ---- 4. invariants -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize(("divergence", "beta"), ALL_CASES, ids=ALL_IDS)
def test_divergence_of_a_distribution_with_itself_is_zero(divergence, beta, tau):
    s, labels = student_logits(), make_labels()
    value, grad = kd_grad(s, s.detach().clone(), labels, divergence=divergence, beta=beta, temperature=tau)
    assert abs(value.item()) <= 1e-5
    assert grad.abs().max().item() <= 1e-6


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize(("beta", "kl"), [(0.0, "forward_kl"), (1.0, "reverse_kl")])
def test_jsd_at_beta_0_and_1_is_the_kl(beta, kl, tau):
    s, t, labels = student_logits(), teacher_logits(), make_labels()
    jsd_value, jsd_g = kd_grad(s, t, labels, divergence="jsd", beta=beta, temperature=tau)
    kl_value, kl_g = kd_grad(s, t, labels, divergence=kl, temperature=tau)
    torch.testing.assert_close(jsd_value, kl_value, rtol=1e-6, atol=0)
    torch.testing.assert_close(jsd_g, kl_g, rtol=1e-6, atol=1e-6 * kl_g.abs().max().item())
    # and the two KLs differ: the test above is not vacuous
    other, _ = kd_grad(s, t, labels, divergence="reverse_kl" if kl == "forward_kl" else "forward_kl", temperature=tau)
    assert abs(other.item() - kl_value.item()) > 0.02 * abs(kl_value.item())


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_jsd_symmetric_at_half(dtype, tau):
    s, t, labels = student_logits(dtype), teacher_logits(dtype), make_labels()
    st = kd_loss(s, t, labels, divergence="jsd", beta=0.5, temperature=tau)
    ts = kd_loss(t, s, labels, divergence="jsd", beta=0.5, temperature=tau)
    torch.testing.assert_close(st, ts, rtol=1e-5, atol=0)
    # not symmetric at another beta (the check has teeth)
    st9 = kd_loss(s, t, labels, divergence="jsd", beta=0.9, temperature=tau)
    ts9 = kd_loss(t, s, labels, divergence="jsd", beta=0.9, temperature=tau)
    assert abs(st9.item() - ts9.item()) > 1e-2 * abs(st9.item())


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_role_swap(beta):
    """Swapping teacher and student maps jsd(beta) to jsd(1 - beta) and forward KL to reverse KL."""
    s, t, labels = student_logits(), teacher_logits(), make_labels()
    a = kd_loss(s, t, labels, divergence="jsd", beta=beta, temperature=2.0)
    b = kd_loss(t, s, labels, divergence="jsd", beta=1.0 - beta, temperature=2.0)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    fwd = kd_loss(s, t, labels, divergence="forward_kl")
    rev = kd_loss(t, s, labels, divergence="reverse_kl")
    torch.testing.assert_close(fwd, rev, rtol=1e-5, atol=0)


@pytest.mark.parametrize(("divergence", "beta"), ALL_CASES, ids=ALL_IDS)
def test_divergences_are_nonnegative_per_token(divergence, beta):
    s, t = student_logits(), teacher_logits()
    for i in range(T):  # one supervised token at a time
        labels = torch.full((B, T), IGNORE)
        labels[:, i] = 0
        assert kd_loss(s, t, labels, divergence=divergence, beta=beta).item() >= 0.0


# ---- 5. one number computed by hand ------------------------------------------------------------------------------


def test_pinned_hand_computed_example():
    # Two tokens, vocabulary 3.
    #   token 0: student logits (0, 0, 0)      -> q = (1/3, 1/3, 1/3)
    #            teacher logits (log 2, 0, 0)  -> p = (1/2, 1/4, 1/4)
    #   token 1: student logits (log 2, 0, 0)  -> q = (1/2, 1/4, 1/4)
    #            teacher logits (0, 0, 0)      -> p = (1/3, 1/3, 1/3)
    # KL(p || q), token 0 = 1/2 log(3/2) + 2 * 1/4 log(3/4) = 1/2 log(9/8)
    # KL(p || q), token 1 = 1/3 log(2/3) + 2 * 1/3 log(4/3) = 1/3 log(32/27)
    # KL(q || p), token 0 = 1/3 log(32/27) (the roles of token 1 swapped)
    # JSD(0.5), token 0: m = (5/12, 7/24, 7/24);
    #   1/2 [1/2 log(6/5) + 1/2 log(6/7)] + 1/2 [1/3 log(4/5) + 2/3 log(8/7)]
    # tau = 2, token 0: p = (sqrt 2, 1, 1) / (2 + sqrt 2), q uniform: 4 * [p0 log(3 p0) + 2 p1 log(3 p1)]
    # NLL with labels (0, 2): -log(1/3) - log(1/4) = log 12
    # d KL(p || q) / d student logits, token 0 = q - p = (-1/6, 1/12, 1/12)
    ln2 = math.log(2.0)
    student = torch.tensor([[0.0, 0.0, 0.0], [ln2, 0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[ln2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    both, first = torch.tensor([0, 2]), torch.tensor([0, IGNORE])

    fwd_0 = 0.5 * math.log(9 / 8)
    fwd_1 = math.log(32 / 27) / 3
    rev_0 = math.log(32 / 27) / 3
    jsd_0 = 0.5 * (0.5 * math.log(6 / 5) + 0.5 * math.log(6 / 7))
    jsd_0 += 0.5 * (math.log(4 / 5) / 3 + 2 * math.log(8 / 7) / 3)
    r2 = math.sqrt(2.0)
    p0, p1 = r2 / (2 + r2), 1 / (2 + r2)
    fwd_0_tau2 = 4 * (p0 * math.log(3 * p0) + 2 * p1 * math.log(3 * p1))

    assert kd_loss(student, teacher, both).item() == pytest.approx(fwd_0 + fwd_1, rel=1e-5)
    assert kd_loss(student, teacher, first).item() == pytest.approx(fwd_0, rel=1e-5)
    assert kd_loss(student, teacher, first, divergence="reverse_kl").item() == pytest.approx(rev_0, rel=1e-5)
    assert kd_loss(student, teacher, first, divergence="jsd", beta=0.5).item() == pytest.approx(jsd_0, rel=1e-5)
    assert kd_loss(student, teacher, first, temperature=2.0).item() == pytest.approx(fwd_0_tau2, rel=1e-5)
    assert nll_loss(student, both).item() == pytest.approx(math.log(12.0), rel=1e-5)

    (grad,) = torch.autograd.grad(kd_loss(student, teacher, first), student)
    torch.testing.assert_close(grad, torch.tensor([[-1 / 6, 1 / 12, 1 / 12], [0.0, 0.0, 0.0]]))

    out = salt_loss(student, both, teacher, nll_weight=0.75, kd_weight=0.25)
    assert out.loss.item() == pytest.approx(0.75 * math.log(12.0) + 0.25 * (fwd_0 + fwd_1), rel=1e-5)


# ---- 6. salt_loss: the mixture, its fields, vocabularies and autograd ---------------------------------------------


def ref_salt(student, teacher, labels, nll_weight, kd_weight, divergence, tau, beta, vocab_size=None):
    kd_s = student if vocab_size is None else student[..., :vocab_size]
    kd_t = teacher if vocab_size is None else teacher[..., :vocab_size]
    return nll_weight * ref_nll(student, labels) + kd_weight * ref_kd(kd_s, kd_t, labels, divergence, tau, beta)


# (divergence, beta, tau): the fused forward-KL path and the general path
MIX_CASES = [("forward_kl", 0.5, 1.0), ("forward_kl", 0.5, 2.0), ("jsd", 0.5, 2.0), ("reverse_kl", 0.5, 1.0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("divergence", "beta", "tau"), MIX_CASES, ids=[f"{c[0]}-tau{c[2]:g}" for c in MIX_CASES])
@pytest.mark.parametrize("w", [0.0, 0.3, 1.0])
def test_salt_loss_is_the_weighted_mixture(w, divergence, beta, tau, dtype):
    s, t, labels = student_logits(dtype), teacher_logits(dtype), make_labels()
    out = salt_loss(s, labels, t, nll_weight=1 - w, kd_weight=w, divergence=divergence, temperature=tau, beta=beta)
    assert isinstance(out, SALTLossOutput)
    (grad,) = torch.autograd.grad(out.loss, s)
    ref, ref_g = ref_value_and_grad(ref_salt, s, t, labels, 1 - w, w, divergence, tau, beta)
    assert_value(out.loss.detach(), ref, TOL[dtype]["value"])
    assert_grad(grad, ref_g, TOL[dtype]["grad"], dtype)

    # the logged fields: detached fp32 sums and the token count
    for field in (out.nll, out.kd, out.teacher_nll):
        assert field.dim() == 0 and field.dtype == torch.float32 and not field.requires_grad
    assert not out.num_tokens.is_floating_point()
    assert out.num_tokens.item() == (labels != IGNORE).sum().item()
    torch.testing.assert_close(out.loss.detach(), (1 - w) * out.nll + w * out.kd, rtol=1e-6, atol=1e-6)
    assert_value(out.nll, ref_nll(s, labels), TOL[dtype]["value"])
    if w > 0:  # with kd_weight == 0 the teacher term is skipped and `kd` is reported as 0
        assert_value(out.kd, ref_kd(s, t, labels, divergence, tau, beta), TOL[dtype]["value"])


@pytest.mark.parametrize(("divergence", "tau"), [("forward_kl", 1.0), ("jsd", 2.0)])
def test_salt_loss_weights_need_not_sum_to_one(divergence, tau):
    s, t, labels = student_logits(), teacher_logits(), make_labels()
    out = salt_loss(s, labels, t, nll_weight=0.7, kd_weight=0.6, divergence=divergence, temperature=tau)
    (grad,) = torch.autograd.grad(out.loss, s)
    ref, ref_g = ref_value_and_grad(ref_salt, s, t, labels, 0.7, 0.6, divergence, tau, 0.5)
    assert_value(out.loss.detach(), ref, 1e-5)
    assert_grad(grad, ref_g, 1e-5, torch.float32)


def test_salt_loss_without_teacher_is_the_nll():
    s, labels = student_logits(), make_labels()
    out = salt_loss(s, labels)
    (grad,) = torch.autograd.grad(out.loss, s)
    ref, ref_g = ref_value_and_grad(ref_nll, s, labels)
    assert_value(out.loss.detach(), ref, 1e-5)
    assert_grad(grad, ref_g, 1e-5, torch.float32)
    assert out.kd.item() == 0.0
    torch.testing.assert_close(out.nll, out.loss.detach())
    # kd_weight has nothing to weigh without a teacher
    out_w = salt_loss(s, labels, None, nll_weight=1.0, kd_weight=0.5)
    torch.testing.assert_close(out_w.loss, out.loss)


@pytest.mark.parametrize(("divergence", "tau"), [("forward_kl", 1.0), ("reverse_kl", 2.0), ("jsd", 1.0)])
@pytest.mark.parametrize(("v_student", "v_teacher"), [(41, 45), (45, 41), (45, 45)])
def test_vocab_size_restricts_kd_to_the_real_vocabulary(v_student, v_teacher, divergence, tau):
    real = 41
    s, t = student_logits(vocab=v_student), teacher_logits(vocab=v_teacher)
    labels = make_labels(vocab=real)
    w = 0.4
    out = salt_loss(
        s, labels, t, nll_weight=1 - w, kd_weight=w, divergence=divergence, temperature=tau, vocab_size=real
    )
    (grad,) = torch.autograd.grad(out.loss, s)
    # KD over the first `real` columns of both; NLL over every column of the student
    ref, ref_g = ref_value_and_grad(ref_salt, s, t, labels, 1 - w, w, divergence, tau, 0.5, real)
    assert_value(out.loss.detach(), ref, 1e-5)
    assert_grad(grad, ref_g, 1e-5, torch.float32)
    assert_value(out.kd, ref_kd(s[..., :real], t[..., :real], labels, divergence, tau), 1e-5)
    assert_value(out.nll, ref_nll(s, labels), 1e-5)
    # kd_loss takes the same argument
    value = kd_loss(s, t, labels, divergence=divergence, temperature=tau, vocab_size=real)
    assert_value(value.detach(), ref_kd(s[..., :real], t[..., :real], labels, divergence, tau), 1e-5)
    if v_student > real:  # padded student columns: only the NLL pushes them (down, by q)
        supervised = labels != IGNORE
        q = torch.softmax(s.detach().double(), dim=-1)[..., real:]
        torch.testing.assert_close(
            grad[..., real:][supervised].double(), (1 - w) * q[supervised], rtol=1e-5, atol=1e-8
        )


def test_mismatched_vocabularies_need_vocab_size():
    s, t, labels = student_logits(vocab=41), teacher_logits(vocab=45), make_labels()
    with pytest.raises(ValueError, match="vocab_size"):
        salt_loss(s, labels, t, kd_weight=0.5)
    with pytest.raises(ValueError, match="vocab_size"):
        kd_loss(s, t, labels)
    for bad in (0, 42, 46):
        with pytest.raises(ValueError, match=f"vocab_size={bad}"):
            kd_loss(s, t, labels, vocab_size=bad)


def test_second_backward_raises():
    s, t, labels = student_logits(), teacher_logits(), make_labels()
    out = salt_loss(s, labels, t, nll_weight=0.5, kd_weight=0.5)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError):
        out.loss.backward()


def test_backward_accumulates_and_scales_like_autograd():
    """loss / k, backward twice through two graphs: .grad = 2/k of the reference (the stored buffer is scaled)."""
    s, t, labels = student_logits(), teacher_logits(), make_labels()
    _, ref_g = ref_value_and_grad(ref_salt, s, t, labels, 0.5, 0.5, "forward_kl", 1.0, 0.5)
    for _ in range(2):
        (salt_loss(s, labels, t, nll_weight=0.5, kd_weight=0.5).loss / 7.0).backward()
    assert_grad(s.grad, 2 * ref_g / 7.0, 1e-5, torch.float32)


def test_no_gradient_to_the_teacher():
    s, labels = student_logits(), make_labels()
    t = teacher_logits().requires_grad_(True)
    out = salt_loss(s, labels, t, nll_weight=0.5, kd_weight=0.5, divergence="jsd", temperature=2.0)
    grads = torch.autograd.grad(out.loss, [s, t], allow_unused=True)
    assert grads[0] is not None and grads[1] is None
    out = salt_loss(s, labels, t, nll_weight=0.5, kd_weight=0.5)
    out.loss.backward()
    assert t.grad is None
    assert s.grad is not None
    assert not out.kd.requires_grad and not out.nll.requires_grad and not out.teacher_nll.requires_grad


def test_student_without_grad():
    s, t, labels = student_logits().detach(), teacher_logits(), make_labels()
    out = salt_loss(s, labels, t, nll_weight=0.5, kd_weight=0.5)
    assert not out.loss.requires_grad
    ref = ref_salt(s, t, labels, 0.5, 0.5, "forward_kl", 1.0, 0.5)
    assert_value(out.loss, ref, 1e-5)


# ---- 7. bad arguments --------------------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    (dict(divergence="kl"), "divergence='kl'"),
    (dict(divergence="JSD"), "divergence='JSD'"),
    (dict(temperature=0.0), "temperature=0"),
    (dict(temperature=-1.0), "temperature=-1"),
    (dict(beta=-0.1), "beta=-0.1"),
    (dict(beta=1.5), "beta=1.5"),
    (dict(chunk_size=0), "chunk_size=0"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_ARGUMENTS, ids=[m for _, m in BAD_ARGUMENTS])
def test_bad_arguments_raise(kwargs, message):
    s, t, labels = student_logits(), teacher_logits(), make_labels()
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        kd_loss(s, t, labels, **kwargs)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        salt_loss(s, labels, t, nll_weight=0.5, kd_weight=0.5, **kwargs)


def test_shape_mismatches_raise():
    s, t, labels = student_logits(), teacher_logits(), make_labels()
    with pytest.raises(ValueError, match="labels"):
        kd_loss(s, t, labels[:, :-1])
    with pytest.raises(ValueError, match="labels"):
        nll_loss(s, labels.reshape(-1))
    with pytest.raises(ValueError, match="teacher_logits"):
        kd_loss(s, t[:, :-1], labels)


def test_compiled_default_term_matches_eager():
    """kd_compile: the torch.compile'd forward-KL chunk gives the eager values and gradients (one compile)."""
    g = torch.Generator().manual_seed(3)
    student = torch.randn(3, 17, 41, generator=g, requires_grad=True)
    teacher = 3 * torch.randn(3, 17, 41, generator=g)
    labels = torch.randint(0, 41, (3, 17), generator=g)
    labels[0, :5] = -100
    results = []
    for compile in (False, True):
        out = salt_loss(student, labels, teacher, nll_weight=0.7, kd_weight=0.3, chunk_size=8, compile=compile)
        (grad,) = torch.autograd.grad(out.loss, student)
        results.append((out.loss.detach(), out.nll, out.kd, out.teacher_nll, grad))
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert_value(results[1][3], ref_nll(teacher, labels), TOL[torch.float32]["value"])


def test_compiled_default_term_with_a_wider_teacher():
    """A teacher padded past the shared vocabulary (vocab_size = the student's): the compiled chunk sees [:vocab]."""
    s, t, labels = student_logits(), teacher_logits(vocab=V + 4), make_labels()
    kw = dict(nll_weight=0.7, kd_weight=0.3, chunk_size=8, vocab_size=V)
    results = []
    for compile in (False, True):
        out = salt_loss(s, labels, t, compile=compile, **kw)
        (grad,) = torch.autograd.grad(out.loss, s)
        results.append((out.loss.detach(), out.nll, out.kd, out.teacher_nll, grad))
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert_value(results[1][3], ref_nll(t[..., :V], labels), TOL[torch.float32]["value"])


# ---- 8. the package's plain reference (shared with the benchmarks) ------------------------------------------------


@pytest.mark.parametrize(("divergence", "beta"), ALL_CASES, ids=ALL_IDS)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_package_reference_equals_the_naive_references(divergence, beta, tau):
    """`reference_salt_loss` is the naive float64 loss of this file: its sums and its gradient."""
    from salt_hf.losses import reference_salt_loss

    s, t, labels = student_logits(), teacher_logits(), make_labels()
    kw = dict(divergence=divergence, temperature=tau, beta=beta)
    out = reference_salt_loss(s, labels, t, nll_weight=0.3, kd_weight=0.7, **kw)
    expected, expected_grad = ref_value_and_grad(
        lambda x: 0.3 * ref_nll(x, labels) + 0.7 * ref_kd(x, t, labels, divergence, tau, beta), s
    )
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(out.nll, ref_nll(s, labels), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(out.kd, ref_kd(s, t, labels, divergence, tau, beta), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(out.teacher_nll, ref_nll(t, labels), rtol=1e-12, atol=0.0)
    assert out.num_tokens.item() == (labels != IGNORE).sum().item()
    # the gradient flows back through the upcast into s's dtype (fp32): compare at fp32 rounding
    (grad,) = torch.autograd.grad(out.loss, s)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-6, atol=1e-7 * expected_grad.abs().max().item())


@pytest.mark.parametrize(("divergence", "beta"), ALL_CASES, ids=ALL_IDS)
@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_fused_loss_equals_the_package_reference(divergence, beta, tau):
    from salt_hf.losses import reference_salt_loss

    s, t, labels = student_logits(), teacher_logits(vocab=V + 6), make_labels()
    kw = dict(nll_weight=0.4, kd_weight=0.6, divergence=divergence, temperature=tau, beta=beta, vocab_size=V)
    fused = salt_loss(s, labels, t, chunk_size=5, **kw)
    reference = reference_salt_loss(s, labels, t, **kw)
    assert_value(fused.loss.detach(), reference.loss.detach(), TOL[torch.float32]["value"])
    assert_value(fused.teacher_nll, reference.teacher_nll, TOL[torch.float32]["value"])
    (fused_grad,) = torch.autograd.grad(fused.loss, s)
    (reference_grad,) = torch.autograd.grad(reference.loss, s)
    assert_grad(fused_grad, reference_grad.double(), TOL[torch.float32]["grad"], torch.float32)


# ---- 9. the teacher's next-token NLL (`teacher_nll`) ---------------------------------------------------------------

# (divergence, beta, tau): the fast forward-KL path (tau 1), the general path at tau 1 (log p gathered) and at tau != 1
# (logsumexp of the teacher's logits)
TEACHER_NLL_CASES = [
    ("forward_kl", 0.5, 1.0),
    ("forward_kl", 0.5, 2.0),
    ("reverse_kl", 0.5, 1.0),
    ("reverse_kl", 0.5, 0.5),
    ("jsd", 0.5, 1.0),
    ("jsd", 0.1, 2.0),
]
TEACHER_NLL_IDS = [f"{d}-{b}-tau{tau:g}" for d, b, tau in TEACHER_NLL_CASES]


def package_reference(*args, **kwargs):
    from salt_hf.losses import reference_salt_loss

    return reference_salt_loss(*args, **kwargs)


@pytest.mark.parametrize("chunk_size", [5, None], ids=["5", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("divergence", "beta", "tau"), TEACHER_NLL_CASES, ids=TEACHER_NLL_IDS)
def test_teacher_nll_matches_reference(divergence, beta, tau, dtype, chunk_size):
    """The teacher's NLL at temperature 1, whatever the divergence and temperature of the KD term."""
    s, t, labels = student_logits(dtype), teacher_logits(dtype), make_labels()
    kw = dict(nll_weight=0.6, kd_weight=0.4, divergence=divergence, beta=beta, temperature=tau)
    out = salt_loss(s, labels, t, chunk_size=chunk_size, **kw)
    expected = ref_nll(t, labels)  # at tau 1: the teacher's logits as they are
    assert expected.item() > 1.0
    assert_value(out.teacher_nll, expected, TOL[dtype]["value"])
    reference = package_reference(s, labels, t, **kw)
    assert reference.teacher_nll.dtype == torch.float64 and not reference.teacher_nll.requires_grad
    torch.testing.assert_close(reference.teacher_nll, expected, rtol=1e-12, atol=0.0)
    # the rest of the output is what it was: the teacher's NLL is reported, not added to the loss
    (grad,) = torch.autograd.grad(out.loss, s)
    _, ref_g = ref_value_and_grad(ref_salt, s, t, labels, 0.6, 0.4, divergence, tau, beta)
    assert_grad(grad, ref_g, TOL[dtype]["grad"], dtype)
    torch.testing.assert_close(out.loss.detach(), 0.6 * out.nll + 0.4 * out.kd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("divergence", "tau"), [("forward_kl", 1.0), ("reverse_kl", 2.0), ("jsd", 1.0)])
@pytest.mark.parametrize(("v_student", "v_teacher"), [(41, 45), (45, 41), (45, 45), (44, 47)])
def test_teacher_nll_over_the_real_vocabulary(v_student, v_teacher, divergence, tau):
    """Padded logits: the teacher's softmax is over its first `vocab_size` columns, not its padding."""
    real = 41
    s, t, labels = student_logits(vocab=v_student), teacher_logits(vocab=v_teacher), make_labels(vocab=real)
    kw = dict(nll_weight=0.5, kd_weight=0.5, divergence=divergence, temperature=tau, vocab_size=real)
    out = salt_loss(s, labels, t, chunk_size=7, **kw)
    expected = ref_nll(t[..., :real], labels)
    assert_value(out.teacher_nll, expected, TOL[torch.float32]["value"])
    assert_value(out.teacher_nll, package_reference(s, labels, t, **kw).teacher_nll, TOL[torch.float32]["value"])
    if v_teacher > real:  # the padding columns would change it
        assert abs(ref_nll(t, labels).item() - expected.item()) > 1e-3 * expected.item()


@pytest.mark.parametrize("ignore_index", [-1, 3])
@pytest.mark.parametrize(("divergence", "tau"), [("forward_kl", 1.0), ("reverse_kl", 1.0), ("jsd", 2.0)])
def test_teacher_nll_leaves_ignored_tokens_out(ignore_index, divergence, tau):
    s, t = student_logits(), teacher_logits()
    labels = make_labels(ignore_index=ignore_index)
    kw = dict(kd_weight=0.5, divergence=divergence, temperature=tau, ignore_index=ignore_index)
    out = salt_loss(s, labels, t, chunk_size=5, **kw)
    expected = ref_nll(t, labels, ignore_index)
    assert_value(out.teacher_nll, expected, TOL[torch.float32]["value"])
    assert_value(out.teacher_nll, package_reference(s, labels, t, **kw).teacher_nll, TOL[torch.float32]["value"])
    # the logits of ignored tokens do not enter it
    t2 = t.clone()
    t2[labels == ignore_index] = 50.0 * torch.randn_like(t2[labels == ignore_index])
    torch.testing.assert_close(salt_loss(s, labels, t2, chunk_size=5, **kw).teacher_nll, out.teacher_nll)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("divergence", "tau"), [("forward_kl", 1.0), ("reverse_kl", 1.0), ("jsd", 2.0)])
def test_teacher_nll_with_banned_tokens(divergence, tau, dtype):
    """A teacher logit of -inf on tokens that are never labels (e.g. banned ids): the teacher's NLL stays finite."""
    s, labels = student_logits(dtype), make_labels()
    t = teacher_logits(dtype)
    g = torch.Generator().manual_seed(4)
    banned = torch.rand(B, T, V, generator=g) < 0.2
    banned.scatter_(-1, torch.where(labels == IGNORE, 0, labels).unsqueeze(-1), False)  # never the label
    banned[:, :, -3:] = True  # and some columns banned everywhere (no label falls there)
    labels[labels >= V - 3] = IGNORE
    t = t.masked_fill(banned, float("-inf"))
    out = salt_loss(s, labels, t, kd_weight=0.5, divergence=divergence, temperature=tau, chunk_size=5)
    assert torch.isfinite(out.teacher_nll)
    assert_value(out.teacher_nll, ref_nll(t, labels), TOL[dtype]["value"])
    reference = package_reference(s, labels, t, kd_weight=0.5, divergence=divergence, temperature=tau)
    assert_value(out.teacher_nll, reference.teacher_nll, TOL[dtype]["value"])


@pytest.mark.parametrize(("divergence", "tau"), [("forward_kl", 1.0), ("jsd", 2.0)])
def test_teacher_nll_is_zero_without_kd_term(divergence, tau):
    """No teacher, or kd_weight == 0: the teacher is never looked at and `teacher_nll` is 0 (as in the reference)."""
    s, t, labels = student_logits(), teacher_logits(), make_labels()
    kw = dict(divergence=divergence, temperature=tau)
    for teacher, kd_weight in ((None, 0.0), (None, 0.5), (t, 0.0)):
        out = salt_loss(s, labels, teacher, kd_weight=kd_weight, **kw)
        assert out.teacher_nll.dim() == 0 and out.teacher_nll.dtype == torch.float32
        assert out.teacher_nll.item() == 0.0 and not out.teacher_nll.requires_grad
        reference = package_reference(s, labels, teacher, kd_weight=kd_weight, **kw)
        assert reference.teacher_nll.dtype == torch.float64 and reference.teacher_nll.item() == 0.0
    # the reference still reports the KD term with a zero weight; only the teacher's NLL follows the fused loss
    assert package_reference(s, labels, t, kd_weight=0.0, **kw).kd.item() > 1.0


def test_teacher_nll_is_the_fifth_field():
    s, t, labels = student_logits(), teacher_logits(), make_labels()
    out = salt_loss(s, labels, t, nll_weight=0.5, kd_weight=0.5)
    assert SALTLossOutput._fields == ("loss", "nll", "kd", "num_tokens", "teacher_nll")
    loss, nll, kd, num_tokens, teacher_nll = out
    assert teacher_nll is out.teacher_nll and num_tokens is out.num_tokens
    # detached: a backward through the loss is unaffected by it
    assert not teacher_nll.requires_grad and teacher_nll.grad_fn is None
    (grad,) = torch.autograd.grad(loss, s)
    _, ref_g = ref_value_and_grad(ref_salt, s, t, labels, 0.5, 0.5, "forward_kl", 1.0, 0.5)
    assert_grad(grad, ref_g, 1e-5, torch.float32)
