"""Downstream evaluation through lm-evaluation-harness (the optional extra `salt_hf[eval]`).

Four things live here:

- an offline LAMBADA-style task, `salt_lastword`: passages cut from any held-out prose, each ending in a word the
  model must predict from what came before. Like LAMBADA, the word is a content word and (by default) occurs
  earlier in the passage, so predicting it rewards using the context rather than local n-gram statistics.
  `lastword_passages` cuts the passages, `write_lastword_task` writes them with a harness task YAML.
- `evaluate_checkpoint`, which runs the harness's own `simple_evaluate` on a `save_pretrained` checkpoint, for our
  local task or any of the harness's standard tasks (those need their datasets in the local Hugging Face cache
  when the hub is out of reach);
- `next_token_metrics`: next-token accuracy and perplexity of a checkpoint on held-out text, with the evaluate
  modules of `salt_hf.metrics`.

- `icl_probe_checkpoint`: the in-context learning probe of `salt_hf.icl_probe` (random sequences repeated twice)
  on a checkpoint.

The `salt-eval` command is the command-line face of all four.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from pathlib import Path

LASTWORD_TASK = "salt_lastword"

# Function words are poor targets: guessable without the passage and not what LAMBADA asks for.
_STOPWORDS = frozenset(
    """about above after again against all also among and any are because been before being below between both but
    came can come could did does doing down during each even ever every for from further had has have having her
    here hers herself him himself his how into its itself just let like made make many may might more most much
    must myself never now off once one only other our ours out over own said same say shall she should since some
    such than that the their theirs them then there these they this those through thus too under until upon very
    was were what when where which while who whom whose why will with within without would yet you your yours
    not nor""".split()
)
_WORD_END = re.compile(r"^(.*?)([^\w]*)$")


def _target_of(word: str, min_chars: int) -> str | None:
    """The word without trailing punctuation if it is a usable target (alphabetic, long enough, no function word)."""
    core = _WORD_END.match(word).group(1)
    if len(core) < min_chars or not core.isalpha() or core.lower() in _STOPWORDS:
        return None
    return core


def lastword_passages(
    texts: Iterable[str],
    min_words: int = 30,
    max_words: int = 70,
    min_target_chars: int = 3,
    require_in_context: bool = True,
    break_on_blank_line: bool = True,
) -> list[dict]:
    """Cuts texts into last-word passages: `{"context": ..., "target": ...}`.

    Each text is read line by line (a verse, a gloss, a line of a fortune); a passage is a run of whole lines with
    at least `min_words` words whose last line ends in a usable target word. The target is that word without its
    trailing punctuation, the context everything before it with whitespace collapsed. A passage longer than
    `max_words` keeps its last `max_words` words. With `require_in_context` the target must also occur (case-
    insensitive, as a whole word) in the context, as LAMBADA's targets mostly do. With `break_on_blank_line` a
    blank line (the end of a fortune, a paragraph) starts a new passage, so a context never spans unrelated texts.
    Passages never overlap.
    """
    if min_words < 2 or max_words < min_words:
        raise ValueError(f"need 2 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}")
    passages = []
    for text in texts:
        buffer: list[str] = []
        for line in text.splitlines():
            if break_on_blank_line and not line.strip():
                buffer = []
                continue
            buffer.extend(line.split())
            if len(buffer) < min_words:
                continue
            target = _target_of(buffer[-1], min_target_chars)
            context_words = buffer[-max_words:-1]
            if target is None:
                continue
            if require_in_context:
                seen = {_WORD_END.match(w.strip("\"'([{")).group(1).lower() for w in context_words}
                if target.lower() not in seen:
                    continue
            passages.append({"context": " ".join(context_words), "target": target})
            buffer = []
    return passages


def write_lastword_task(
    passages: list[dict],
    task_dir: str | Path,
    task_name: str = LASTWORD_TASK,
    fewshot_pool: int = 64,
    max_passages: int | None = None,
    seed: int = 0,
) -> Path:
    """Writes `passages` as a harness task in `task_dir`: `test.jsonl`, `fewshot.jsonl` and `<task_name>.yaml`.

    The first `fewshot_pool` passages of a seeded shuffle go to the few-shot pool (never scored), the rest, at most
    `max_passages`, are the test split. Pass `task_dir` as `include_path` to the harness's `TaskManager`. Metrics:
    `acc` (every token of the target is the model's greedy choice) and `perplexity` (exp of minus the mean log-
    likelihood of the target), as for the harness's own `lambada_openai`.
    """
    task_dir = Path(task_dir)
    if len(passages) <= fewshot_pool:
        raise ValueError(
            f"{len(passages)} passages are too few for a few-shot pool of {fewshot_pool} plus a test split: give more"
            " held-out text or a smaller fewshot_pool"
        )
    order = list(range(len(passages)))
    random.Random(seed).shuffle(order)
    fewshot = [passages[i] for i in order[:fewshot_pool]]
    test = [passages[i] for i in order[fewshot_pool:]][:max_passages]
    task_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("test", test), ("fewshot", fewshot)):
        with open(task_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    # JSON is valid YAML, so the harness reads this config without us writing YAML by hand.
    config = {
        "task": task_name,
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {
                "test": str((task_dir / "test.jsonl").resolve()),
                "fewshot": str((task_dir / "fewshot.jsonl").resolve()),
            }
        },
        "output_type": "loglikelihood",
        "test_split": "test",
        "fewshot_split": "fewshot",
        "doc_to_text": "{{context}}",
        # the harness adds no delimiter to a loglikelihood continuation: the space belongs to the target, and few-shot
        # examples then need no delimiter of their own
        "doc_to_target": "{{' ' + target}}",
        "target_delimiter": "",
        "metric_list": [
            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0, "passages": len(test), "fewshot_pool": len(fewshot)},
    }
    path = task_dir / f"{task_name}.yaml"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def require_lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise ImportError(
            "downstream evaluation needs lm-evaluation-harness, an optional extra: pip install 'salt_hf[eval]'"
        ) from e
    return lm_eval


def task_manager_for(tasks: list[str], include_path: str | Path | None = None):
    """The harness's `TaskManager` over its own tasks and those in `include_path`; `ValueError` for an unknown task."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    task_manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in task_manager.all_tasks]
    if unknown:
        raise ValueError(
            f"unknown lm-evaluation-harness task(s) {unknown}: see `lm-eval ls tasks`, or build the local last-word"
            " task with --lastword_text"
        )
    return task_manager


def evaluate_checkpoint(
    model_path: str,
    tasks: list[str],
    tokenizer: str | None = None,
    include_path: str | Path | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    limit: int | float | None = None,
    dtype: str = "float32",
    seed: int = 0,
    task_manager=None,
) -> dict:
    """Runs lm-evaluation-harness's `simple_evaluate` with its Hugging Face backend on one checkpoint.

    `model_path`: a `save_pretrained` folder (or a hub id when online); `tokenizer` defaults to the same folder;
    `include_path`: a folder of extra task YAMLs (e.g. from `write_lastword_task`); `task_manager`: one from
    `task_manager_for` (built here from `include_path` by default). Returns the harness's `results` entry
    (task -> metric -> value) with the harness's configs under `"configs"`.
    """
    require_lm_eval()
    from lm_eval import simple_evaluate

    if task_manager is None:
        task_manager = task_manager_for(tasks, include_path)
    out = simple_evaluate(
        model="hf",
        model_args={"pretrained": model_path, "tokenizer": tokenizer or model_path, "dtype": dtype},
        tasks=tasks,
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        device=device,
        limit=limit,
        task_manager=task_manager,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    return {"results": out["results"], "n_samples": out.get("n-samples"), "configs": out.get("configs")}


def next_token_windows(texts: Iterable[str], tokenizer, seq_length: int) -> list[list[int]]:
    """Each text tokenised on its own and cut into consecutive windows of at most `seq_length` tokens (windows of
    one token, with nothing to predict, are dropped)."""
    windows = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        windows.extend(ids[i : i + seq_length] for i in range(0, len(ids), seq_length))
    return [w for w in windows if len(w) >= 2]


def next_token_metrics(
    model_path: str,
    texts: Iterable[str],
    seq_length: int,
    tokenizer: str | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    """Next-token accuracy and perplexity of a checkpoint on `texts` (the evaluate modules of `salt_hf.metrics`).

    Every token of a window but its first is scored from the tokens before it in the window (`next_token_windows`).
    Returns `{"accuracy": ..., "perplexity": ..., "tokens": <scored tokens>, "windows": <windows>}`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .metrics import IGNORE_INDEX, load_metrics, next_token_inputs, preprocess_logits_for_metrics

    windows = next_token_windows(texts, AutoTokenizer.from_pretrained(tokenizer or model_path), seq_length)
    if not windows:
        raise ValueError("the texts hold no window of two or more tokens: nothing to score")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device).eval()
    metrics = load_metrics(keep_in_memory=True)
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        width = max(map(len, batch))
        # right padding: a padded position is masked out of attention and has no label
        labels = torch.tensor([w + [IGNORE_INDEX] * (width - len(w)) for w in batch])
        with torch.no_grad():
            logits = model(
                input_ids=labels.clamp(min=0).to(device), attention_mask=(labels >= 0).long().to(device)
            ).logits
        top, label_log_probs = preprocess_logits_for_metrics(logits, labels.to(device))
        metrics.add_batch(**next_token_inputs(top.cpu().numpy(), label_log_probs.cpu().numpy(), labels.numpy()))
    tokens = sum(len(w) - 1 for w in windows)
    return {**metrics.compute(), "tokens": tokens, "windows": len(windows)}


def icl_probe_checkpoint(
    model_path: str,
    tokenizer: str | None = None,
    sequences: int = 64,
    length: int = 32,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    """`salt_hf.icl_probe.icl_probe` on a `save_pretrained` checkpoint; ids drawn over the tokenizer's real
    vocabulary (padded embedding rows excluded). Returns the probe's fields as a dict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .icl_probe import icl_probe

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(device)
    vocab = len(AutoTokenizer.from_pretrained(tokenizer or model_path))
    return icl_probe(model, vocab, sequences=sequences, length=length, seed=seed).to_dict()
