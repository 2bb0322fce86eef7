"""The benchmarks' shared half: the recipe, a run's spec, building and training one run, and its typed result.

The suite scripts (salt_suite/salt_benchmark.py, regime/regime_benchmark.py, ...) declare their runs as `RunSpec`s,
train each with `train_run` in worker processes, store every result as JSON, and summarise the stored JSON as a step of
its own. micro/step_cost.py and micro/scoring_cost.py build their models here too.

The one shared module, at benchmarks/ itself; each study lives in a folder beside it (benchmarks/README.md). A study's
script starts with a two-line shim that puts benchmarks/ first on sys.path and imports this module, which puts every
study folder on sys.path right behind benchmarks/ (`STUDIES`): after `import bench`, any study's module is imported by
its flat name (`import paper_regime_runs`, `import step_cost`), and a name means the same file from whichever folder
the script runs. The folders go ahead of the script's own folder; no two studies define the same module name
(tests/test_benchmarks_layout.py).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

# Every run reads local files only (prepared corpora, saved teachers, tokenizers) and the GPU machines have no
# network: never wait on the hub. It must be set before transformers is imported: here, and in the scripts, which
# import this module ahead of datasets, transformers and salt_hf (isort sorts `bench` first).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback
from transformers.trainer_callback import ExportableState

from salt_hf import SALTConfig, SALTTrainer
from salt_hf.checkpointing import last_complete_checkpoint
from salt_hf.models import new_model_config

HERE = Path(__file__).resolve().parent
WORK, RESULTS = HERE / "work", HERE / "results"  # prepared corpora and run folders (not committed); raw JSON
# every study folder (one holding a README.md), in name order: micro/ (step_cost.py, imported by other studies) comes
# before teacher_targets/ (whose step_cost.py is a script of its own, never imported)
STUDIES = sorted(p for p in HERE.iterdir() if (p / "README.md").is_file() and p not in (WORK, RESULTS))
_at = sys.path.index(str(HERE)) + 1 if str(HERE) in sys.path else 0
sys.path[_at:_at] = [str(p) for p in STUDIES if str(p) not in sys.path[:_at]]

# ---- the recipe: the RESEARCH.md probe's regime (sequence 128, batch 16, AdamW 2e-3 cosine) -----------------------
BATCH, LR, WARMUP, WEIGHT_DECAY = 16, 2e-3, 50, 0.01
EVAL_ROWS, EVAL_BATCH, N_EVALS = 256, 64, 15  # held-out rows per half (dev, test); evaluations per run
STUDENT, TEACHERS = "5m", {"1m": 2.0, "3m": 2.0}  # teacher size -> its steps as a multiple of the student's
DEFAULT = dict(kd_weight=0.5, kd_ratio=0.2, kd_schedule="step", teacher="1m")  # SALT's default setting
# The special-token ids in the models' configs, as every stored run was built; no padding id, so every embedding row
# trains.
TOKEN_IDS = SimpleNamespace(bos_token_id=0, eos_token_id=0, pad_token_id=None)


@dataclass
class RunSpec:
    name: str
    model: str = STUDENT
    steps: int = 1500
    seed: int = 0
    teacher: str | None = None  # teacher size name, or None for plain training
    kd_weight: float = 0.0
    kd_ratio: float | None = None
    kd_schedule: str = "step"
    group: str = ""
    extra: dict = field(default_factory=dict)  # more SALTConfig fields, applied last


def teacher_dir(corpus: str, size: str) -> Path:
    """Where the teacher run of `size` saves its model and the SALT runs load it from."""
    return WORK / corpus / "teachers" / size


def teacher_run(size: str, steps: int) -> RunSpec:
    """The run that trains the teacher of `size` for a suite whose students train `steps` steps."""
    return RunSpec(f"teacher_{size}", model=size, steps=int(steps * TEACHERS[size]), group="teacher")


@dataclass(kw_only=True)
class RunResult:
    """One run, as stored in `<results>/<corpus>/runs/<name>.json` (the fields in the file's order)."""

    spec: RunSpec
    corpus: str
    device: str
    params: int
    kd_steps: int
    curve_step_test_dev: list  # [step, test loss, dev loss] at every evaluation
    final_test_loss: float
    final_dev_loss: float
    train_wall_s: float  # SALT_DS's scoring included
    scoring_s: float = 0.0  # SALT_DS's scoring before training (runs stored before SALT_DS lack the field)
    selection: dict | None = None  # SALT_DS's selection summary
    step_times_s: list[float]  # every optimizer step, evaluation excluded
    median_kd_step_s: float | None
    median_plain_step_s: float | None
    train_log: list[dict]  # the Trainer's log entries but evaluations (training losses, kd_steps="auto"'s decision)

    @classmethod
    def load(cls, path: Path) -> RunResult:
        stored = json.loads(path.read_text())
        return cls(**{**stored, "spec": RunSpec(**stored["spec"])})

    def save(self, path: Path) -> None:
        write_json(path, asdict(self))

    def time_to_step(self, step: int | None) -> float | None:
        """Training time up to `step`, plus SALT_DS's scoring before training (the selection's cost)."""
        return None if step is None else self.scoring_s + sum(self.step_times_s[:step])


def load_runs(folder: Path) -> dict[str, RunResult]:
    # directory order, as the stored summaries list their runs
    return {p.stem: RunResult.load(p) for p in folder.glob("*.json")}


def write_json(path: Path, obj, indent: int | None = None) -> None:
    """Writes `obj` as JSON atomically: a run stopped mid-write leaves the old file (or none), never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(obj, indent=indent) + "\n")
    os.replace(partial, path)


# ---- one run (in a worker process) ------------------------------------------------------------------------------


class Rows(torch.utils.data.Dataset):
    """Packed token rows as causal-LM examples (the model shifts the labels)."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self):
        return self.rows.shape[0]

    def __getitem__(self, i):
        ids = self.rows[i].long()
        return {"input_ids": ids, "labels": ids}


def load_corpus(corpus: str) -> tuple[dict, Rows, dict[str, Rows]]:
    """A corpus prepared by prepare_corpora.py: its info, training rows, and the two halves of its validation rows
    (documents no run trains on): `dev` picks the best setting, `test` gives every number reported."""
    work = WORK / corpus
    val = torch.load(work / "validation.pt")[: 2 * EVAL_ROWS]
    evals = {"dev": Rows(val[0::2]), "test": Rows(val[1::2])}
    return json.loads((work / "info.json").read_text()), Rows(torch.load(work / "train.pt")), evals


def layers_by_width(size: str) -> dict | None:
    """The Llama fields of a size written `<layers>x<width>` (e.g. `6x256`): heads of 32 dimensions and an MLP of
    about 2.75 x width (a multiple of 16), as in `salt_hf.models.MODEL_SIZES`; None for any other name."""
    match = re.fullmatch(r"(\d+)x(\d+)", size)
    if match is None:
        return None
    layers, width = int(match[1]), int(match[2])
    heads = max(1, width // 32)
    return dict(
        hidden_size=width,
        intermediate_size=16 * round(2.75 * width / 16),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        tie_word_embeddings=True,
    )


def build_model(size: str, vocab: int, seq: int, seed: int):
    """A new Llama of a named size (`salt_hf.models.MODEL_SIZES`) or of a `<layers>x<width>` size, embeddings tied,
    initialised from `seed`."""
    torch.manual_seed(seed)
    fields = layers_by_width(size)
    if fields is None:
        return LlamaForCausalLM(new_model_config(size, vocab, seq, TOKEN_IDS))
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=seq, **vars(TOKEN_IDS), **fields)
    return LlamaForCausalLM(config)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class StepTimer(TrainerCallback, ExportableState):
    """Records the wall-clock of every optimizer step, training only (evaluation excluded). Its times and the run's
    wall-clock so far go into every checkpoint (`stateful_callbacks`), so a run resumed from one (`train_run`'s
    `resume`) reports the whole run's."""

    def __init__(self, device: str):
        self.device, self.times, self._t0 = device, [], None
        self.wall_before, self._begin = 0.0, time.time()  # wall-clock of the run's earlier processes; this one's start

    def state(self) -> dict:
        wall = self.wall_before + time.time() - self._begin
        return {"args": {"device": self.device}, "attributes": {"times": list(self.times), "wall_s": wall}}

    def on_train_begin(self, args, state, control, **kwargs):
        stored = state.stateful_callbacks.get(type(self).__name__)
        if state.global_step > 0 and isinstance(stored, dict):  # resumed from a checkpoint
            self.times = list(stored["attributes"]["times"])[: state.global_step]
            self.wall_before = stored["attributes"]["wall_s"]
            state.log_history.append({"resumed_at_step": state.global_step, "step": state.global_step})

    def on_step_begin(self, args, state, control, **kwargs):
        sync(self.device)
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.times.append(time.perf_counter() - self._t0)


def recipe_args(spec: RunSpec, device: str, output_dir: Path) -> SALTConfig:
    """The benchmark's SALTConfig for one run: the recipe above, the run's SALT fields, then `spec.extra`."""
    every = max(1, spec.steps // N_EVALS)
    recipe = dict(
        output_dir=str(output_dir),
        max_steps=spec.steps,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=EVAL_BATCH,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=WARMUP,
        weight_decay=WEIGHT_DECAY,
        eval_strategy="steps",
        eval_steps=every,
        logging_steps=every,
        save_strategy="no",
        report_to="none",
        seed=spec.seed,
        data_seed=spec.seed,  # the same data order for the same seed in every run
        use_cpu=device == "cpu",
        disable_tqdm=True,
        dataloader_num_workers=0,
        kd_weight=spec.kd_weight if spec.teacher else 0.0,
        kd_ratio=spec.kd_ratio,
        kd_schedule=spec.kd_schedule,
    )
    return SALTConfig(**{**recipe, **spec.extra})


def eval_curve(log_history: list[dict]) -> list[tuple[int, float, float]]:
    """(step, test loss, dev loss) per evaluation; the two eval sets are logged as two entries per evaluation."""
    by_step: dict[int, dict] = {}
    for h in log_history:
        by_step.setdefault(h["step"], {}).update(h)
    return [
        (step, h["eval_test_loss"], h["eval_dev_loss"])
        for step, h in sorted(by_step.items())
        if "eval_test_loss" in h and "eval_dev_loss" in h
    ]


def train_run(
    spec: RunSpec,
    corpus: str,
    device: str,
    run_dir: Path,
    save_to: Path | None = None,
    threads: int | None = None,
    callbacks: list | None = None,
    trainer_cls: type[SALTTrainer] = SALTTrainer,
    rows: torch.Tensor | None = None,
    resume: bool = False,
) -> RunResult:
    """Trains one run with the recipe; the baseline is SALTTrainer without a teacher, which trains as Trainer does.
    `save_to` keeps the final model; `threads` caps the CPU threads (runs that share the cores side by side);
    `callbacks` and `trainer_cls` add measurements (the trainer's class must train as SALTTrainer does); `rows`
    (indices into the corpus's training rows) trains on those rows only; `resume` continues from the newest complete
    checkpoint in `run_dir` when there is one (a run saving checkpoints, interrupted): its step times and wall-clock
    are the whole run's, its `train_log` records where it resumed. Without `resume` a run always starts afresh."""
    if threads:
        torch.set_num_threads(threads)
    info, train_rows, evals = load_corpus(corpus)
    if rows is not None:
        train_rows = Rows(train_rows.rows[rows])
    if spec.extra.get("kd_data_selection"):  # one score cache per corpus, shared by the SALT_DS runs
        spec.extra.setdefault("kd_select_cache_dir", str(WORK / corpus / "scores"))
    args = recipe_args(spec, device, run_dir)
    model = build_model(spec.model, info["vocab"], info["seq_length"], spec.seed)
    timer = StepTimer(device)
    trainer = trainer_cls(
        model=model,
        teacher_model=str(teacher_dir(corpus, spec.teacher)) if spec.teacher else None,
        args=args,
        train_dataset=train_rows,
        eval_dataset=evals,
        callbacks=[timer, *(callbacks or [])],
    )
    t0 = time.time()
    scoring_s, selection = 0.0, None
    if args.kd_data_selection:  # SALT_DS: score (or read the cached scores) first, timed apart from training
        selection = trainer.prepare_kd_selection()
        scoring_s = time.time() - t0
    checkpoint = last_complete_checkpoint(run_dir) if resume else None
    trainer.train(resume_from_checkpoint=checkpoint)
    wall = time.time() - t0 + timer.wall_before
    if save_to is not None:
        trainer.save_model(str(save_to))
    kd_steps, times = trainer.kd_steps if spec.teacher else 0, timer.times
    curve = eval_curve(trainer.state.log_history)
    print(f"{spec.name}: test {curve[-1][1]:.4f} wall {wall:.0f}s", flush=True)
    return RunResult(
        spec=spec,
        corpus=corpus,
        device=device,
        params=sum(p.numel() for p in model.parameters()),
        kd_steps=kd_steps,
        curve_step_test_dev=curve,
        final_test_loss=curve[-1][1],
        final_dev_loss=curve[-1][2],
        train_wall_s=wall,
        scoring_s=scoring_s,
        selection=selection.summary if selection else None,
        step_times_s=times,
        median_kd_step_s=statistics.median(times[:kd_steps]) if kd_steps else None,
        median_plain_step_s=statistics.median(times[kd_steps:]) if kd_steps < len(times) else None,
        # every entry but the evaluations (kept in `curve_step_test_dev`): training losses, kd_steps="auto"'s decision
        # and what added callbacks recorded
        train_log=[h for h in trainer.state.log_history if not any(k.startswith("eval_") for k in h)],
    )


def in_workers(train: Callable[[RunSpec], object], specs: list[RunSpec], workers: int) -> list:
    """`train(spec)` for every spec, `workers` at a time, each in a spawned process (CUDA does not survive fork)."""
    with ProcessPoolExecutor(workers, mp_context=torch.multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(train, specs))


# ---- summaries over the stored runs -------------------------------------------------------------------------------


def first_step_at_or_below(curve, target: float, col: int = 1) -> int | None:
    return next((row[0] for row in curve if row[col] <= target), None)


def seed_stats(values: list, reached: bool = False) -> dict:
    """Mean and standard deviation over the seeds with a value (None: the target was not reached), and the values;
    `reached` adds how many seeds have one."""
    vals = [v for v in values if v is not None]
    stats = {
        "mean": statistics.mean(vals) if vals else None,
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else None,
    }
    if reached:
        stats["reached"] = f"{len(vals)}/{len(values)}"
    return {**stats, "seeds": values}


def invocation_figures(summary_path: Path, figures: dict, summarise_only: bool) -> dict:
    """`figures` about this invocation (suite wall-clock, device, workers, ...), or, when it only summarises, the
    same keys as the invocation that trained wrote them into the summary at `summary_path`."""
    if not summarise_only:
        return figures
    previous = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {k: previous[k] for k in figures if k in previous}


def measure_step_costs(pairs: dict[str, tuple[str, str]], out: Path, vocab: int, seq: int, steps: int = 40) -> dict:
    """micro/step_cost.py for each (student, teacher) pair: one thread, BATCH rows of `seq` tokens, the plain Trainer
    step, SALT's KD step (teacher forward included) and its plain-stage step interleaved in one process; random token
    ids (a step's cost does not depend on them). Writes {key: step_cost.py's row} to `out`. Run it on an idle
    machine."""
    rows = {}
    for key, (student, teacher) in pairs.items():
        path = out.with_name(f"{out.stem}_{key}.json")
        cmd = [
            sys.executable,
            str(HERE / "micro" / "step_cost.py"),
            "--vocabs",
            str(vocab),
            "--seq",
            str(seq),
        ]
        cmd += ["--tokens", str(BATCH * seq), "--student", student, "--teacher", teacher]
        cmd += ["--threads", "1", "--no-memory", "--steps", str(steps), "--out", str(path)]
        subprocess.run(cmd, check=True)
        rows[key] = json.loads(path.read_text())[0]
        path.unlink()
    write_json(out, rows, indent=2)
    return rows


def load_step_costs(path: Path) -> dict:
    """The rows `measure_step_costs` wrote to `path` (an empty dict before it ran)."""
    return json.loads(path.read_text()) if path.is_file() else {}
