"""Where SALT pays: student size against data repetition (issue 31). See README.md beside this file.

    python benchmarks/size_repetition/code_corpus.py --build                               # the corpus, ~2 min
    python benchmarks/size_repetition/size_repetition.py --commit --parallel 2 --only rep_1m   # the 1M repetition axis
    python benchmarks/size_repetition/size_repetition.py --commit --parallel 2            # rep_1m, size, rep_0.5m
    python benchmarks/size_repetition/size_repetition.py --commit --parallel 2 --only budget,seeds
    python benchmarks/size_repetition/size_repetition.py --summarise-only                 # summary.json, figure
    python benchmarks/size_repetition/size_repetition.py --step-cost                      # on an idle machine
    python benchmarks/size_repetition/size_repetition.py --stash     # before the session ends: commit the checkpoints

Idempotent: a run whose JSON is stored (results/runs/) is skipped; a run that was interrupted resumes from its newest
complete checkpoint (every SAVE_EVERY steps in benchmarks/work/code/size_repetition/<run>/); a teacher whose weights
are committed (results/teachers/) but absent from the work folder is restored, not retrained. Every invocation that
trains first checks the corpus against corpus.json's content hash and refuses a different one. A run longer than a
session: `--stash` commits each unfinished run's newest complete checkpoint (results/resume/, stash.py), and the next
invocation on a fresh checkout resumes from it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

# bench.py lives one folder up (benchmarks/ is not a package); importing it puts regime/ on the path too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench  # noqa: E402
import code_corpus  # noqa: E402
import stash  # noqa: E402
import torch  # noqa: E402
from regime_benchmark import commit as commit_files  # noqa: E402
from runs import (  # noqa: E402
    CORPUS,
    DEFAULT_GROUPS,
    RESUME,
    RUNS,
    STEP_COST,
    Run,
    commit_copy,
    cost_pairs,
    groups,
    run_dir,
    slice_rows,
    stored_teacher,
)
from summary import write_outputs  # noqa: E402
from table import README  # noqa: E402

from salt_hf.checkpointing import last_complete_checkpoint  # noqa: E402


def check_corpus() -> dict:
    """The corpus's info once its content (hashed anew) is corpus.json's; exits with the reason otherwise."""
    try:
        return code_corpus.check()
    except code_corpus.CorpusMismatch as err:
        raise SystemExit(f"error: {err}") from None


def train_one(run: Run, threads: int) -> None:
    spec = run.spec
    info = json.loads((code_corpus.work_dir() / "info.json").read_text())
    if info["content_sha256"] != code_corpus.load_recipe()["content_sha256"]:  # rebuilt since the check: refuse
        raise SystemExit(f"error: the corpus in {code_corpus.work_dir()} no longer matches corpus.json")
    rows = slice_rows(run.size, run.repeats, info["train_rows"])
    save_to = bench.teacher_dir(CORPUS, spec.name.removeprefix("teacher_")) if run.role == "teacher" else None
    result = bench.train_run(spec, CORPUS, "cpu", run_dir(spec.name), save_to, threads, rows=rows, resume=True)
    if save_to is not None:  # committed with the run, so that a fresh checkout does not train it again
        commit_copy(save_to, stored_teacher(save_to.name))
    result.save(RUNS / f"{spec.name}.json")


def restore_teachers(todo: list[Run]) -> None:
    """Teachers the runs in `todo` need whose weights are committed but not in the work folder."""
    for run in todo:
        if run.spec.teacher and not bench.teacher_dir(CORPUS, run.spec.teacher).is_dir():
            stored = stored_teacher(run.spec.teacher)
            if stored.is_dir():
                shutil.copytree(stored, bench.teacher_dir(CORPUS, run.spec.teacher))


def restore_checkpoints(todo: list[Run]) -> None:
    """Runs in `todo` with a committed checkpoint (--stash) and none in the work folder: joined back, so they
    resume where a stopped session left them."""
    for run in todo:
        resumed = stash.unstash(RESUME / run.spec.name, run_dir(run.spec.name))
        if resumed is not None:
            print(f"{run.spec.name}: resumes from {resumed}", flush=True)


def stash_unfinished() -> None:
    """The newest complete checkpoint of every run in the work folder not yet stored, committed (the stash of a
    stored run dropped), so that a session's end does not lose a run's progress."""
    folders = sorted(p for p in run_dir("").iterdir() if p.is_dir()) if run_dir("").is_dir() else []
    for folder in folders:
        if not (RUNS / f"{folder.name}.json").is_file():
            print(folder.name, "->", stash.stash(folder, RESUME / folder.name), flush=True)
    for old in sorted(RESUME.glob("*")) if RESUME.is_dir() else []:
        if (RUNS / f"{old.name}.json").is_file():
            shutil.rmtree(old)
    RESUME.mkdir(parents=True, exist_ok=True)
    commit_folder(RESUME, "size x repetition: the unfinished runs' newest checkpoints (--stash)")


def commit_folder(folder: Path, message: str) -> None:
    """Commits `folder` as it is now, files removed included (another commit may hold the index lock a moment)."""
    git = ["git", "-C", str(folder.parent)]
    for _ in range(5):
        if subprocess.run([*git, "add", "-A", "--", folder.name]).returncode == 0:
            if subprocess.run([*git, "diff", "--cached", "--quiet", "--", folder.name]).returncode == 0:
                return  # nothing changed
            if subprocess.run([*git, "commit", "-q", "-m", message, "--", folder.name]).returncode == 0:
                return
        time.sleep(2)
    raise SystemExit(f"error: could not commit {folder}")


def named_runs(names: list[str]) -> list[Run]:
    """The runs of the named groups and the runs named one by one, in the order given (each once)."""
    every = groups()
    by_name = {r.spec.name: r for g in every.values() for r in g}
    out: dict[str, Run] = {}
    for n in names:
        if n not in every and n not in by_name:
            raise SystemExit(f"error: --only {n}: neither a group ({', '.join(every)}) nor a run of the study")
        for r in every[n] if n in every else [by_name[n]]:
            out.setdefault(r.spec.name, r)
    return list(out.values())


def ready(pending: list[Run], busy: list[Run]) -> Run | None:
    """The first run of `pending` whose teacher is not still to train (pending or busy): a teacher must be finished
    before its students start."""
    training = {r.spec.name.removeprefix("teacher_") for r in [*pending, *busy] if r.role == "teacher"}
    return next((r for r in pending if r.spec.teacher not in training), None)


def commit_stored(names: list[str]) -> None:
    """Every stored run and teacher, not only `names`: a run stored by a process stopped before its commit goes in
    with the next one."""
    paths = [*sorted(RUNS.glob("*.json")), *sorted(stored_teacher("").glob("*/*"))]
    commit_files([*paths, *write_outputs(readme=README)], f"size x repetition: {', '.join(names)}")


def die_with(parent: int) -> None:
    """A worker's initializer: end the worker when the invocation that started it ends (Linux's parent-death signal),
    so that stopping the invocation never leaves a worker training a run a later invocation trains too."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent ended before the signal was asked for
        os._exit(1)


def pending(names: list[str], busy: list[Run]) -> list[Run]:
    """The runs of `names` neither stored nor training, as the stored runs define them now (a weight decay chosen
    adds SALT at it, a lead adds the budget form), those with a checkpoint to resume from first."""
    training = {r.spec.name for r in busy}
    todo = [r for r in named_runs(names) if r.spec.name not in training]
    todo = [r for r in todo if not (RUNS / f"{r.spec.name}.json").is_file()]
    # a run an earlier invocation left half-done goes first (its order otherwise kept): it ends soonest
    return sorted(todo, key=lambda r: last_complete_checkpoint(run_dir(r.spec.name)) is None)


def train(args) -> None:
    """The runs to train, `args.parallel` at a time in spawned processes (one thread each): a slot that frees takes
    the next run whose teacher is trained, so a short run never leaves a core idle waiting for a long one. The list
    is drawn again whenever a run ends, so runs that the stored ones call for join the same invocation."""
    check_corpus()
    names = args.only.split(",") if args.only else list(DEFAULT_GROUPS)
    restore_checkpoints(named_runs(names))
    todo = pending(names, [])
    print(f"to train ({len(todo)}): {', '.join(r.spec.name for r in todo)}", flush=True)
    context = torch.multiprocessing.get_context("spawn")  # CUDA does not survive fork
    with ProcessPoolExecutor(args.parallel, mp_context=context, initializer=die_with, initargs=(os.getpid(),)) as pool:
        busy: dict = {}
        while todo or busy:
            restore_teachers(todo)
            while len(busy) < args.parallel and (run := ready(todo, list(busy.values()))) is not None:
                todo.remove(run)
                print("started:", run.spec.name, flush=True)
                busy[pool.submit(train_one, run, 1)] = run
            done, _ = wait(busy, return_when=FIRST_COMPLETED)
            for future in done:
                run = busy.pop(future)
                future.result()  # a failed run raises here, with the worker's traceback
                print("finished:", run.spec.name, flush=True)
                if args.commit:
                    commit_stored([run.spec.name])
            todo = pending(names, list(busy.values()))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated groups or run names")
    parser.add_argument("--parallel", type=int, default=1, help="runs side by side, one thread each")
    parser.add_argument("--commit", action="store_true", help="git-commit each batch's stored runs as they finish")
    parser.add_argument("--summarise-only", action="store_true", help="train nothing: summarise the stored runs")
    parser.add_argument("--stash", action="store_true", help="commit the unfinished runs' newest checkpoints")
    parser.add_argument("--step-cost", action="store_true", help="measure the step costs (an otherwise idle machine)")
    return parser.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    if args.stash:
        return stash_unfinished()
    if args.step_cost:
        bench.measure_step_costs(cost_pairs(), STEP_COST, vocab=300, seq=128)
    elif not args.summarise_only:
        train(args)
    print(f"done: {time.time() - t0:.0f}s", flush=True)
    for path in write_outputs(readme=README):
        print("wrote", path)


if __name__ == "__main__":
    main()
