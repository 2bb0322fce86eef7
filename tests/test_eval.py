"""salt-eval and the offline last-word task: passage cutting by hand-worked examples, the task files, and the
harness's numbers on a real (briefly trained) checkpoint against a direct computation with the model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fixtures import make_llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from salt_hf.cli.eval import main as salt_eval
from salt_hf.evaluation import LASTWORD_TASK, lastword_passages, next_token_windows, write_lastword_task

# ---- cutting passages ----------------------------------------------------------------------------------------------


def test_passage_ends_at_a_content_word_that_occurs_in_its_context():
    # line 1 ends in "harbour", which its context lacks: no passage yet; line 2 ends the passage at "lantern"
    text = "the lantern glowed over the harbour\nsailors watched the sway of the lantern.\n"
    got = lastword_passages([text], min_words=4, max_words=50)
    context = "the lantern glowed over the harbour sailors watched the sway of the"
    assert got == [{"context": context, "target": "lantern"}]


def test_function_words_short_words_and_numbers_are_not_targets():
    lines = ["river river river and the", "river river river river a", "river river 1999", "river river river."]
    got = lastword_passages(["\n".join(lines)], min_words=3, max_words=50)
    # the first three lines end in "the", "a", "1999": no passage yet; the fourth line ends the first passage
    assert len(got) == 1 and got[0]["target"] == "river"
    assert got[0]["context"].endswith("1999 river river")


def test_target_must_occur_in_context_unless_disabled():
    text = "one two three four five six\n"
    assert lastword_passages([text], min_words=3) == []
    got = lastword_passages([text], min_words=3, require_in_context=False)
    assert got == [{"context": "one two three four five", "target": "six"}]


def test_blank_line_starts_a_new_passage_and_long_passages_keep_their_tail():
    text = "alpha beta gamma\n\nkappa kappa kappa kappa kappa kappa kappa\n"
    got = lastword_passages([text], min_words=4, max_words=4)
    assert got == [{"context": "kappa kappa kappa", "target": "kappa"}]
    joined = lastword_passages([text], min_words=4, max_words=50, break_on_blank_line=False)
    assert joined[0]["context"].startswith("alpha beta gamma kappa")


def test_bad_word_limits_are_refused():
    with pytest.raises(ValueError, match="min_words"):
        lastword_passages(["a b c"], min_words=10, max_words=5)


def test_task_files_split_few_shot_pool_from_test(tmp_path):
    passages = [{"context": f"word{i} and word{i}", "target": f"word{i}"} for i in range(20)]
    yaml_path = write_lastword_task(passages, tmp_path, fewshot_pool=5, max_passages=10, seed=3)
    config = json.loads(yaml_path.read_text())
    assert config["task"] == LASTWORD_TASK and config["output_type"] == "loglikelihood"
    test = [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()]
    fewshot = [json.loads(line) for line in (tmp_path / "fewshot.jsonl").read_text().splitlines()]
    assert len(test) == 10 and len(fewshot) == 5
    assert not {p["target"] for p in test} & {p["target"] for p in fewshot}
    again = write_lastword_task(passages, tmp_path / "again", fewshot_pool=5, max_passages=10, seed=3)
    assert (again.parent / "test.jsonl").read_text() == (tmp_path / "test.jsonl").read_text()
    with pytest.raises(ValueError, match="too few"):
        write_lastword_task(passages[:5], tmp_path / "few", fewshot_pool=5)


# ---- the harness on a real checkpoint ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def heldout(texts, tmp_path_factory):
    """Held-out text files and the 40 passages salt-eval will score from them (rebuilt here the way it builds them;
    short enough to fit the model's window untruncated)."""
    root = tmp_path_factory.mktemp("heldout")
    for i, text in enumerate(texts):
        (root / f"doc{i}.txt").write_text(text)
    passages = lastword_passages([p.read_text() for p in sorted(root.rglob("*.txt"))], min_words=10, max_words=25)
    task = write_lastword_task(passages, tmp_path_factory.mktemp("task"), max_passages=40, seed=0)
    scored = [json.loads(line) for line in (task.parent / "test.jsonl").read_text().splitlines()]
    assert len(scored) == 40
    return root, scored


@pytest.fixture(scope="module")
def checkpoint(tokenizer, heldout, tmp_path_factory):
    """A tiny Llama that has half-memorised the scored passages, so that some targets are its greedy choice."""
    _, scored = heldout
    model = make_llama(len(tokenizer), hidden=64, layers=2, seed=0, max_pos=256)
    stream = torch.tensor([t for p in scored for t in tokenizer(p["context"] + " " + p["target"] + "\n")["input_ids"]])
    rows = stream[: len(stream) // 64 * 64].view(-1, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(120):
        batch = rows[torch.arange(step * 8, step * 8 + 8) % len(rows)]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _naive_scores(path, passages):
    """Log-likelihood of " target" after the context and whether every target token is the argmax."""
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    lls, greedy = [], []
    for p in passages:
        ctx, tgt = tok(p["context"])["input_ids"], tok(" " + p["target"])["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ctx + tgt])).logits[0].double()
        logp = torch.log_softmax(logits[len(ctx) - 1 : -1], dim=-1)
        lls.append(sum(logp[i, t].item() for i, t in enumerate(tgt)))
        greedy.append(all(logp[i].argmax().item() == t for i, t in enumerate(tgt)))
    return lls, greedy


def lastword_args(checkpoint, root, out, *extra: str) -> list[str]:
    """salt-eval's flags for 40 zero-shot last-word passages of 10-25 words cut from `root`, written to `out`."""
    return [
        *("--model_name_or_path", str(checkpoint), "--lastword_text", str(root)),
        *("--lastword_min_words", "10", "--lastword_max_words", "25", "--lastword_max_passages", "40"),
        *("--num_fewshot", "0", *extra, "--output_file", str(out)),
    ]


def test_salt_eval_matches_a_direct_computation(checkpoint, heldout, tmp_path):
    root, scored = heldout
    out = tmp_path / "lastword.json"
    args = lastword_args(checkpoint, root, out)
    assert salt_eval(args) == 0
    report = json.loads(out.read_text())
    res = report["results"][LASTWORD_TASK]
    assert report["n_samples"][LASTWORD_TASK]["effective"] == 40
    lls, greedy = _naive_scores(checkpoint, scored)
    assert res["acc,none"] == pytest.approx(sum(greedy) / len(greedy), abs=1e-9)
    assert res["perplexity,none"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-4)
    assert 0 < sum(greedy) < len(greedy), "the trained model should get some, not all, targets: the check has teeth"
    # an existing results file is never overwritten
    before = out.read_text()
    assert salt_eval(args) == 2
    assert out.read_text() == before


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "nothing to evaluate"),
        (["--tasks", "no_such_task_xyz"], "unknown lm-evaluation-harness task"),
        (["--lastword_text", "/no/such/folder"], "no such file or folder"),
        (["--lastword_text", "{empty}"], "no .txt files"),
    ],
)
def test_salt_eval_bad_input_is_refused_with_a_fix(checkpoint, tmp_path, capsys, extra, message):
    (tmp_path / "empty").mkdir()
    extra = [e.format(empty=tmp_path / "empty") for e in extra]
    assert salt_eval(["--model_name_or_path", str(checkpoint), *extra]) == 2
    assert message in capsys.readouterr().err


def test_salt_eval_refuses_a_folder_without_a_model(tmp_path, capsys):
    assert salt_eval(["--model_name_or_path", str(tmp_path), "--tasks", LASTWORD_TASK]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_salt_eval_next_token_metrics_match_a_direct_computation(checkpoint, heldout, tmp_path):
    root, _ = heldout
    out = tmp_path / "report.json"
    args = lastword_args(checkpoint, root, out, "--next_token_seq_length", "128")
    assert salt_eval(args) == 0
    got = json.loads(out.read_text())["next_token"]
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    windows = next_token_windows([p.read_text() for p in sorted(root.rglob("*.txt"))], tok, 128)
    assert all(2 <= len(w) <= 128 for w in windows) and any(len(w) < 128 for w in windows)
    correct, nll, tokens = 0, 0.0, 0
    for w in windows:  # one window at a time, unpadded
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([w])).logits[0, :-1].double(), dim=-1)
        following = torch.tensor(w[1:])
        correct += int((logp.argmax(-1) == following).sum())
        nll -= float(logp.gather(-1, following[:, None]).sum())
        tokens += len(w) - 1
    assert got["tokens"] == tokens and got["windows"] == len(windows)
    assert got["accuracy"] == pytest.approx(correct / tokens, abs=2 / tokens)  # a near-tie may flip in a batch
    assert got["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)


def test_salt_eval_refuses_a_missing_model_folder(tmp_path, capsys):
    missing = tmp_path / "no_such_checkpoint"
    assert salt_eval(["--model_name_or_path", str(missing), "--tasks", LASTWORD_TASK]) == 2
    assert f"--model_name_or_path {missing}: no such folder" in capsys.readouterr().err
