"""The in-context learning probe against hand-computed cases: a model that copies perfectly, one that cannot, padded
vocabularies, and salt-eval's --icl_probe on a real checkpoint against a direct computation."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch
import torch.nn.functional as F
from fixtures import make_llama
from transformers import AutoModelForCausalLM

from salt_hf.cli.eval import main as salt_eval
from salt_hf.icl_probe import icl_probe, repeated_sequences

V, L = 11, 6


class Copier(torch.nn.Module):
    """Uniform logits, except from the end of the first copy on: a logit of `confidence` on the token `length`
    positions back (perfect induction). `padded` extra vocabulary columns get a logit of 100 everywhere."""

    def __init__(self, vocab: int, length: int, confidence: float | None, padded: int = 0):
        super().__init__()
        self.vocab, self.length, self.confidence, self.padded = vocab, length, confidence, padded
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, input_ids):
        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab + self.padded)
        logits[..., self.vocab :] = 100.0
        if self.confidence is not None:
            for pos in range(self.length - 1, t - 1):  # position pos predicts token pos + 1
                logits[torch.arange(b), pos, input_ids[:, pos + 1 - self.length]] = self.confidence
        return types.SimpleNamespace(logits=logits)


def test_sequences_are_two_equal_seeded_copies_within_the_range():
    ids = repeated_sequences(V, 5, L, seed=3, low=2)
    assert ids.shape == (5, 2 * L)
    assert torch.equal(ids[:, :L], ids[:, L:])
    assert int(ids.min()) >= 2 and int(ids.max()) < V
    assert torch.equal(ids, repeated_sequences(V, 5, L, seed=3, low=2))
    assert not torch.equal(ids, repeated_sequences(V, 5, L, seed=4, low=2))


def test_a_model_that_cannot_copy_scores_log_v_on_both_copies():
    got = icl_probe(Copier(V, L, confidence=None), V, sequences=7, length=L, low=1)
    assert got.first_copy_loss == pytest.approx(math.log(V), abs=1e-6)
    assert got.second_copy_loss == pytest.approx(math.log(V), abs=1e-6)
    assert got.icl_gain == pytest.approx(0.0, abs=1e-6)
    # uniform logits: argmax is id 0, which low=1 never draws
    assert got.first_copy_accuracy == 0.0 and got.second_copy_accuracy == 0.0


def test_a_perfect_copier_scores_the_hand_computed_loss_on_the_second_copy():
    c = 5.0
    got = icl_probe(Copier(V, L, confidence=c), V, sequences=7, length=L, low=1)
    # softmax of one logit c among V - 1 zeros: the loss is log(e^c + V - 1) - c
    second = math.log(math.exp(c) + V - 1) - c
    assert got.first_copy_loss == pytest.approx(math.log(V), abs=1e-6)
    assert got.second_copy_loss == pytest.approx(second, abs=1e-6)
    assert got.icl_gain == pytest.approx(math.log(V) - second, abs=1e-6)
    assert got.second_copy_accuracy == 1.0 and got.first_copy_accuracy == 0.0


def test_padded_vocabulary_columns_are_left_out_of_the_softmax():
    plain = icl_probe(Copier(V, L, confidence=5.0), V, sequences=4, length=L, low=1)
    padded = icl_probe(Copier(V, L, confidence=5.0, padded=3), V, sequences=4, length=L, low=1)
    assert padded == plain


def test_a_real_llama_against_a_direct_computation():
    torch.manual_seed(0)
    model = make_llama(40, 32, 1, seed=0)
    got = icl_probe(model, 40, sequences=3, length=8, seed=1, batch_size=2)
    ids = repeated_sequences(40, 3, 8, seed=1)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].double()
    loss = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    assert got.first_copy_loss == pytest.approx(loss[:, 0:7].mean().item(), rel=1e-5)
    assert got.second_copy_loss == pytest.approx(loss[:, 8:15].mean().item(), rel=1e-5)
    assert model.training  # the probe puts the model back in the mode it found it in


@pytest.mark.parametrize("kwargs", [dict(length=1), dict(sequences=0), dict(low=V)])
def test_bad_probe_sizes_are_refused(kwargs):
    with pytest.raises(ValueError, match="need"):
        repeated_sequences(V, **{"sequences": 2, "length": L, **kwargs})


def test_salt_eval_icl_probe_on_a_saved_checkpoint(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = make_llama(len(tokenizer), 32, 1, seed=0)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "icl.json"
    args = ["--model_name_or_path", str(tmp_path / "ckpt"), "--icl_probe", "--icl_sequences", "4"]
    assert salt_eval([*args, "--icl_length", "8", "--output_file", str(out)]) == 0
    report = json.loads(out.read_text())["icl_probe"]
    direct = icl_probe(AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt"), len(tokenizer), 4, 8)
    assert report == pytest.approx(direct.to_dict(), rel=1e-6)
