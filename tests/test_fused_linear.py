"""salt_hf.losses.fused_linear against a naive float64 reference: logits materialised from the same hidden states,
weights, biases, scales and soft-caps, then `reference_salt_loss` and autograd. Values AND gradients w.r.t. the
student's hidden states, output weight and bias; and equality with `salt_loss` on the materialised fp32 logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from salt_hf.losses import SALTLossOutput, fused_linear_salt_loss, reference_salt_loss, salt_loss

B, T = 3, 13  # N = 39 tokens: not a multiple of the chunk sizes below
N = B * T
H, HT = 24, 16  # student and teacher widths differ, as in SALT
V = 48
IGNORE = -100
CHUNK = 7

# (divergence, beta)
DIVERGENCES = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)]
DIVERGENCE_IDS = ["forward_kl", "reverse_kl", "jsd-0.3"]

# value: relative; gradient: absolute, relative to the largest entry of the reference gradient. bf16: the logits come
# out of a bf16 matmul (as the model's own layer), so they carry bf16 rounding before everything goes to fp32.
TOL = {
    torch.float32: {"value": 1e-5, "grad": 1e-5},
    torch.bfloat16: {"value": 1e-2, "grad": 3e-2},
}
HEAD_KEYS = ("bias", "scale", "softcap")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.py)


# ---- inputs ------------------------------------------------------------------------------------------------------


def randn(seed, *shape, scale=1.0, dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)


def student(vocab=V, dtype=torch.float32, bias=True, batch=B):
    """hidden [B, T, H], weight [vocab, H], bias [vocab]: logits of std ~2."""
    return {
        "hidden": randn(1, batch, T, H, dtype=dtype, requires_grad=True),
        "weight": randn(2, vocab, H, scale=2.0 / H**0.5, dtype=dtype, requires_grad=True),
        "bias": randn(3, vocab, scale=0.5, dtype=dtype, requires_grad=True) if bias else None,
    }


def teacher(vocab=V, dtype=torch.float32, bias=False, batch=B):
    """Another seed and scale (logits of std ~3): KD per token is O(1), far above fp32 rounding."""
    return {
        "hidden": randn(4, batch, T, HT, dtype=dtype),
        "weight": randn(5, vocab, HT, scale=3.0 / HT**0.5, dtype=dtype),
        "bias": randn(6, vocab, scale=0.5, dtype=dtype) if bias else None,
    }


def make_labels(vocab=V, batch=B):
    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, vocab, (batch, T), generator=g)
    ignored = torch.rand(batch, T, generator=g) < 0.3
    ignored[0, 0], ignored[0, 1] = True, False
    ignored[2, :] = True  # a whole sequence unsupervised
    labels[ignored] = IGNORE
    return labels


# ---- the function under test and the reference --------------------------------------------------------------------


def call(s, t, labels, **kw):
    return fused_linear_salt_loss(
        s["hidden"],
        s["weight"],
        labels,
        None if t is None else t["hidden"],
        None if t is None else t["weight"],
        student_bias=s["bias"],
        teacher_bias=None if t is None else t["bias"],
        **kw,
    )


def fused(s, t, labels, **kw):
    """fused_linear_salt_loss and its gradients w.r.t. the student tensors that require one (name -> grad)."""
    out = call(s, t, labels, **kw)
    names = [k for k, v in s.items() if v is not None and v.requires_grad]
    grads = torch.autograd.grad(out.loss, [s[k] for k in names]) if names else ()
    return out, dict(zip(names, grads, strict=True))


def logits(hidden, weight, bias=None, scale=1.0, softcap=None):
    """The model's logits written plainly: scale * (hidden @ weight.T + bias), then softcap * tanh(. / softcap)."""
    z = hidden @ weight.T
    if bias is not None:
        z = z + bias
    z = scale * z
    return z if softcap is None else softcap * torch.tanh(z / softcap)


def split_head_kwargs(kw):
    heads = {"student": {}, "teacher": {}}
    loss_kw = {}
    for key, value in kw.items():
        model, _, name = key.partition("_")
        if model in heads and name in HEAD_KEYS:
            heads[model][name] = value
        elif key != "chunk_size":
            loss_kw[key] = value
    return heads, loss_kw


def reference(s, t, labels, **kw):
    """float64 logits from the same tensors, `reference_salt_loss`, autograd: (SALTLossOutput, name -> grad)."""
    heads, loss_kw = split_head_kwargs(kw)
    s64 = {k: v.detach().double().requires_grad_(True) for k, v in s.items() if v is not None}
    z = logits(s64["hidden"], s64["weight"], s64.get("bias"), **heads["student"])
    tz = None
    if t is not None:
        t64 = {k: v.double() for k, v in t.items() if v is not None}
        tz = logits(t64["hidden"], t64["weight"], t64.get("bias"), **heads["teacher"])
    out = reference_salt_loss(z, labels, tz, **loss_kw)
    names = [k for k in s64 if s[k].requires_grad]
    grads = torch.autograd.grad(out.loss, [s64[k] for k in names])
    return out, dict(zip(names, grads, strict=True))


def assert_value(actual, expected, rel):
    assert actual.dim() == 0 and actual.dtype == torch.float32 and torch.isfinite(actual)
    err = abs(actual.double().item() - expected.item())
    assert err <= rel * max(abs(expected.item()), 1e-12), (actual.item(), expected.item(), err)


def assert_matches(out, grads, ref, ref_grads, s, dtype=torch.float32):
    tol = TOL[dtype]
    for name in ("loss", "nll", "kd", "teacher_nll"):
        assert_value(getattr(out, name), getattr(ref, name), tol["value"])
    assert out.num_tokens.item() == ref.num_tokens.item()
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert grad.dtype == s[name].dtype and grad.shape == s[name].shape, name
        scale = ref_grads[name].abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(
            grad.double(),
            ref_grads[name],
            rtol=tol["grad"],
            atol=tol["grad"] * scale,
            msg=lambda m, name=name: f"{name}: {m}",
        )


def check_against_reference(s, t, labels, dtype=torch.float32, **kw):
    out, grads = fused(s, t, labels, **kw)
    ref, ref_grads = reference(s, t, labels, **kw)
    assert_matches(out, grads, ref, ref_grads, s, dtype)
    return out, grads, ref


KD = dict(nll_weight=0.6, kd_weight=0.4)


# ---- 1. every divergence, temperature, with and without bias ------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCES, ids=DIVERGENCE_IDS)
def test_matches_reference(divergence, beta, tau, bias):
    s, t, labels = student(bias=bias), teacher(bias=bias), make_labels()
    out, _, ref = check_against_reference(
        s, t, labels, divergence=divergence, beta=beta, temperature=tau, chunk_size=CHUNK, **KD
    )
    assert ref.kd.item() > 1.0 and ref.teacher_nll.item() > 1.0  # far above rounding


def test_nll_only_matches_reference():
    s, labels = student(), make_labels()
    out, _, ref = check_against_reference(s, None, labels, chunk_size=CHUNK)
    assert out.kd.item() == 0.0 and out.teacher_nll.item() == 0.0
    z = logits(*(s[k].detach().double() for k in ("hidden", "weight", "bias")))
    ce = F.cross_entropy(z.reshape(N, V), labels.reshape(N), reduction="sum")
    assert_value(out.nll, ce, 1e-5)


# ---- 2. chunking, padded vocabularies, soft-capping and scale -----------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, CHUNK, None, 10 * N], ids=["1", "7", "auto", "gtN"])
@pytest.mark.parametrize(("divergence", "tau"), [("forward_kl", 1.0), ("jsd", 2.0)])
def test_chunk_sizes(chunk_size, divergence, tau):
    check_against_reference(
        student(), teacher(), make_labels(), divergence=divergence, temperature=tau, chunk_size=chunk_size, **KD
    )


@pytest.mark.parametrize(("v_student", "v_teacher"), [(41, 45), (45, 41)])
@pytest.mark.parametrize(("divergence", "tau"), [("forward_kl", 1.0), ("jsd", 2.0)])
def test_padded_vocabularies(v_student, v_teacher, divergence, tau):
    s, t, labels = student(v_student), teacher(v_teacher, bias=True), make_labels(vocab=41)
    check_against_reference(
        s, t, labels, divergence=divergence, beta=0.3, temperature=tau, vocab_size=41, chunk_size=CHUNK, **KD
    )


HEADS = {
    "student-softcap": dict(student_softcap=3.0),
    "student-scale": dict(student_scale=0.7),
    "teacher-softcap-scale": dict(teacher_softcap=4.0, teacher_scale=1.5),
    "both": dict(student_softcap=2.5, student_scale=1.3, teacher_softcap=5.0, teacher_scale=0.8),
}


@pytest.mark.parametrize("head", HEADS.values(), ids=HEADS.keys())
@pytest.mark.parametrize(("divergence", "beta", "tau"), [("forward_kl", 0.5, 1.0), ("jsd", 0.3, 2.0)])
def test_softcap_and_scale(head, divergence, beta, tau):
    s, t, labels = student(), teacher(bias=True), make_labels()
    if "student_softcap" in head:  # the soft-cap bends: some logits are well past it
        assert logits(s["hidden"], s["weight"], s["bias"]).abs().max() > 2 * head["student_softcap"]
    check_against_reference(
        s, t, labels, divergence=divergence, beta=beta, temperature=tau, chunk_size=CHUNK, **head, **KD
    )


@pytest.mark.parametrize(("divergence", "tau"), [("forward_kl", 1.0), ("reverse_kl", 2.0)])
def test_bf16_inputs(divergence, tau):
    s, t, labels = student(dtype=torch.bfloat16), teacher(dtype=torch.bfloat16, bias=True), make_labels()
    out, _, _ = check_against_reference(
        s,
        t,
        labels,
        torch.bfloat16,
        divergence=divergence,
        temperature=tau,
        student_softcap=4.0,
        chunk_size=CHUNK,
        **KD,
    )
    assert all(x.dtype == torch.float32 for x in (out.loss, out.nll, out.kd, out.teacher_nll))
    # the matmul runs in bf16, as the model's own layer: the values are salt_loss's on the bf16 logits it produces
    with torch.no_grad():
        z = F.linear(s["hidden"], s["weight"], s["bias"]).float()
        expected = salt_loss(
            4.0 * torch.tanh(z / 4.0),
            labels,
            F.linear(t["hidden"], t["weight"], t["bias"]),
            divergence=divergence,
            temperature=tau,
            chunk_size=CHUNK,
            **KD,
        )
    for name in SALTLossOutput._fields:
        torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=1e-6, atol=0, msg=name)


def test_autocast_runs_the_matmul_in_the_autocast_dtype():
    """Under autocast, fp32 tensors give what their bf16 casts give outside it (as nn.Linear would); grads in fp32."""
    s, t, labels = student(), teacher(bias=True), make_labels()
    kw = dict(divergence="jsd", temperature=2.0, chunk_size=CHUNK, **KD)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, grads = fused(s, t, labels, **kw)
    cast = {k: v.detach().bfloat16().requires_grad_(True) for k, v in s.items()}
    out_bf16, grads_bf16 = fused(cast, {k: None if v is None else v.bfloat16() for k, v in t.items()}, labels, **kw)
    for name in SALTLossOutput._fields:
        torch.testing.assert_close(getattr(out, name), getattr(out_bf16, name), rtol=1e-6, atol=0)
    for name, grad in grads.items():
        assert grad.dtype == torch.float32
        torch.testing.assert_close(grad.bfloat16(), grads_bf16[name], rtol=0, atol=0)


# ---- 3. the same numbers as salt_loss on the materialised logits --------------------------------------------------

SALT_LOSS_CASES = {
    "fast-forward-kl": dict(**KD),
    "jsd-tau2-softcap": dict(
        divergence="jsd", beta=0.3, temperature=2.0, student_softcap=3.0, teacher_scale=1.5, **KD
    ),
    "reverse-kl-padded": dict(divergence="reverse_kl", vocab_size=41, **KD),
    "nll-only": dict(),
    "kd-weight-0": dict(nll_weight=1.0, kd_weight=0.0, divergence="jsd"),
}


@pytest.mark.parametrize("case", SALT_LOSS_CASES.values(), ids=SALT_LOSS_CASES.keys())
def test_equals_salt_loss_on_materialised_logits(case):
    padded = "vocab_size" in case
    s, labels = student(45 if padded else V), make_labels(41 if padded else V)
    t = teacher(41 if padded else V, bias=True) if case.get("kd_weight", 0.0) != 0.0 or "divergence" in case else None
    out, grads = fused(s, t, labels, chunk_size=CHUNK, **case)

    heads, loss_kw = split_head_kwargs(case)
    z = logits(s["hidden"], s["weight"], s["bias"], **heads["student"])  # fp32, with autograd: [N, V] on purpose
    tz = None if t is None else logits(t["hidden"], t["weight"], t["bias"], **heads["teacher"])
    expected = salt_loss(z, labels, tz, chunk_size=CHUNK, **loss_kw)
    expected_grads = torch.autograd.grad(expected.loss, [s[k] for k in grads])
    for name in SALTLossOutput._fields:
        torch.testing.assert_close(getattr(out, name), getattr(expected, name), rtol=1e-6, atol=0, msg=name)
    for (name, grad), ref in zip(grads.items(), expected_grads, strict=True):
        torch.testing.assert_close(grad, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item(), msg=name)
    if t is not None and case.get("kd_weight") == 0.0:
        assert out.kd.item() == 0.0 and out.teacher_nll.item() == 0.0  # as salt_loss: teacher not looked at


# ---- 4. ignored tokens, which tensors get a gradient ---------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize(("divergence", "beta"), DIVERGENCES, ids=DIVERGENCE_IDS)
def test_all_tokens_ignored(divergence, beta, tau):
    s, t = student(), teacher(bias=True)
    labels = torch.full((B, T), IGNORE)
    out, grads = fused(
        s, t, labels, divergence=divergence, beta=beta, temperature=tau, student_softcap=3.0, chunk_size=5, **KD
    )
    for name in SALTLossOutput._fields:
        assert getattr(out, name).item() == 0, name
    assert grads.keys() == {"hidden", "weight", "bias"}
    for grad in grads.values():
        assert torch.isfinite(grad).all() and (grad == 0).all()


def test_ignored_tokens_get_no_gradient_and_change_nothing():
    s, t, labels = student(), teacher(), make_labels()
    ignored = labels == IGNORE
    out, grads = fused(s, t, labels, divergence="jsd", chunk_size=CHUNK, **KD)
    assert (grads["hidden"][ignored] == 0).all()
    assert (grads["hidden"][~ignored].abs().sum(-1) > 0).all()
    moved = dict(s, hidden=s["hidden"].detach().clone())
    moved["hidden"][ignored] = 100.0 * torch.randn_like(moved["hidden"][ignored])
    moved_out, _ = fused(moved, t, labels, divergence="jsd", chunk_size=CHUNK, **KD)
    torch.testing.assert_close(moved_out.loss, out.loss.detach())


def test_teacher_gets_no_gradient():
    s, t, labels = student(), teacher(bias=True), make_labels()
    for tensor in t.values():
        tensor.requires_grad_(True)
    out = call(s, t, labels, chunk_size=CHUNK, **KD)
    out.loss.backward()
    assert all(tensor.grad is None for tensor in t.values())
    assert all(not x.requires_grad for x in (out.nll, out.kd, out.teacher_nll, out.num_tokens))


@pytest.mark.parametrize("frozen", ["hidden", "weight", "bias"])
def test_gradients_only_for_what_needs_them(frozen):
    """A frozen output layer (PEFT without LoRA on it) or a frozen bias: the other gradients are unchanged."""
    s, t, labels = student(), teacher(), make_labels()
    s[frozen].requires_grad_(False)
    _, grads, _ = check_against_reference(s, t, labels, divergence="reverse_kl", chunk_size=CHUNK, **KD)
    assert frozen not in grads and len(grads) == 2


def test_no_grad_gives_the_same_values():
    s, t, labels = student(), teacher(), make_labels()
    out, _ = fused(s, t, labels, divergence="jsd", temperature=2.0, chunk_size=CHUNK, **KD)
    with torch.no_grad():
        frozen = call(s, t, labels, divergence="jsd", temperature=2.0, chunk_size=CHUNK, **KD)
    for name in SALTLossOutput._fields:
        torch.testing.assert_close(getattr(frozen, name), getattr(out, name).detach(), rtol=1e-6, atol=0)


def test_weight_also_used_as_input_embedding():
    """Tied embeddings: the weight's gradient sums the output layer's (ours) and the embedding's (autograd's)."""
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(8))
    mix = randn(9, H, H, scale=2.0 / H**0.5)
    weight, t, labels = student(bias=False)["weight"], teacher(), make_labels()
    hidden = torch.tanh(F.embedding(ids, weight) @ mix)
    out = fused_linear_salt_loss(hidden, weight, labels, t["hidden"], t["weight"], chunk_size=CHUNK, **KD)
    (grad,) = torch.autograd.grad(out.loss, weight)

    w64 = weight.detach().double().requires_grad_(True)
    z = logits(torch.tanh(F.embedding(ids, w64) @ mix.double()), w64)
    ref = reference_salt_loss(z, labels, logits(t["hidden"].double(), t["weight"].double()), **KD)
    (ref_grad,) = torch.autograd.grad(ref.loss, w64)
    assert_value(out.loss, ref.loss, 1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-5 * ref_grad.abs().max().item())


def test_backward_scales_by_the_incoming_gradient_once():
    s, t, labels = student(), teacher(), make_labels()
    _, grads = fused(s, t, labels, chunk_size=CHUNK, **KD)
    loss = call(s, t, labels, chunk_size=CHUNK, **KD).loss
    scaled = torch.autograd.grad(2.5 * loss, [s["hidden"], s["weight"], s["bias"]], retain_graph=True)
    for grad, name in zip(scaled, ("hidden", "weight", "bias"), strict=True):
        torch.testing.assert_close(grad, 2.5 * grads[name], rtol=1e-6, atol=0)
    with pytest.raises(RuntimeError, match="one backward"):
        torch.autograd.grad(loss, s["hidden"])


# ---- 5. memory: no [tokens x vocab] tensor, of either model --------------------------------------------------------


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation returns (meta tensors, which hold no memory, left out)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_leaves(out):
            if isinstance(x, torch.Tensor) and x.device.type != "meta":
                self.largest = max(self.largest, x.numel())
        return out


@pytest.mark.parametrize(
    "case",
    [dict(), dict(divergence="jsd", temperature=2.0, vocab_size=V, student_softcap=3.0)],
    ids=["fast-forward-kl", "jsd-padded-softcap"],
)
def test_never_holds_tokens_by_vocab(case):
    batch, chunk = 8, 4
    n_tokens = batch * T
    v_teacher = V + 4 if "vocab_size" in case else V
    s, t = student(batch=batch), teacher(v_teacher, bias=True, batch=batch)
    labels = make_labels(batch=batch)
    with LargestTensor() as mode:
        out, _ = fused(s, t, labels, chunk_size=chunk, **case, **KD)
    # the gradients themselves ([N, H], [V, H]) and a few [chunk, V] temporaries; the logits would be [N, V]
    bound = max(n_tokens * H, V * H, chunk * v_teacher)
    assert bound <= n_tokens * V // 2
    assert 0 < mode.largest <= bound
    assert out.kd.item() > 1.0


def test_automatic_chunk_has_at_least_256_tokens():
    # at vocab 2**15 the 16 MiB rule gives 128 tokens; the fused path's floor makes the chunks [256, V]
    vocab, n_tokens = 2**15, 300
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n_tokens, H, generator=g, requires_grad=True)
    weight = torch.randn(vocab, H, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (n_tokens,), generator=g)
    with LargestTensor() as mode:
        fused_linear_salt_loss(hidden, weight, labels).loss.backward()
    assert mode.largest == 256 * vocab
    with LargestTensor() as mode:  # an explicit chunk size is taken as given
        fused_linear_salt_loss(hidden, weight, labels, chunk_size=100).loss.backward()
    assert mode.largest == 100 * vocab


# ---- 6. input errors ---------------------------------------------------------------------------------------------


def base_inputs():
    s, t = student(), teacher()
    return dict(
        student_hidden=s["hidden"],
        student_weight=s["weight"],
        labels=make_labels(),
        teacher_hidden=t["hidden"],
        teacher_weight=t["weight"],
        student_bias=s["bias"],
        kd_weight=0.5,
    )


BAD_INPUTS = {
    "weight-1d": (lambda x: dict(student_weight=x["student_weight"][0]), r"must be \[vocab, hidden\]"),
    "hidden-vs-labels": (lambda x: dict(student_hidden=x["student_hidden"][:, :-1]), "does not align with labels"),
    "hidden-width": (lambda x: dict(student_weight=x["student_weight"][:, :-1]), "has width 24"),
    "bias-shape": (lambda x: dict(student_bias=x["student_bias"][:-1]), "student_bias of shape"),
    "integer-hidden": (lambda x: dict(student_hidden=x["student_hidden"].long()), "floating point"),
    "dtype-mismatch": (lambda x: dict(student_hidden=x["student_hidden"].double()), "cast one of them"),
    "teacher-half-given": (lambda x: dict(teacher_weight=None), "both teacher_hidden and teacher_weight"),
    "teacher-bias-alone": (
        lambda x: dict(teacher_hidden=None, teacher_weight=None, teacher_bias=torch.zeros(V)),
        "without teacher_hidden",
    ),
    "teacher-hidden-vs-labels": (lambda x: dict(teacher_hidden=x["teacher_hidden"][:-1]), "teacher_hidden of shape"),
    "vocab-differs": (lambda x: dict(teacher_weight=torch.zeros(V + 1, HT)), "pass vocab_size"),
    "vocab-size-too-large": (lambda x: dict(vocab_size=V + 1), f"vocab_size={V + 1} must be in"),
    "divergence": (lambda x: dict(divergence="kl"), "is not one of"),
    "temperature": (lambda x: dict(temperature=0.0), "temperature=0.0"),
    "beta": (lambda x: dict(beta=1.5), "beta=1.5"),
    "softcap": (lambda x: dict(student_softcap=0.0), "student_softcap=0.0"),
    "scale": (lambda x: dict(teacher_scale=float("inf")), "teacher_scale=inf"),
    "chunk-size": (lambda x: dict(chunk_size=0), "chunk_size=0"),
}


@pytest.mark.parametrize(("change", "match"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_input_errors(change, match):
    inputs = base_inputs()
    inputs.update(change(inputs))
    with pytest.raises(ValueError, match=match):
        fused_linear_salt_loss(**inputs)
