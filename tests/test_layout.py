"""The code's shape (issue 14): short functions, a short trainer, no formatter opt-outs, no imports of cli/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "salt_hf"
MAX_FUNCTION_LINES = 60  # lines of code: docstring, blank lines and comment lines not counted
MAX_TRAINER_LINES = 300


def python_files(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    body = node.body
    has_docstring = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
    if has_docstring and isinstance(body[0].value.value, str):
        if len(body) == 1:
            return 0
        first = body[1].lineno
    else:
        first = node.lineno
    return sum(1 for line in lines[first - 1 : node.end_lineno] if line.strip() and not line.strip().startswith("#"))


def long_functions(path: Path) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            count = code_lines(node, lines)
            if count > MAX_FUNCTION_LINES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({count} lines)")
    return found


def test_counter_counts_code_lines_only():
    source = 'def f():\n    """Doc.\n\n    More doc.\n    """\n    # a comment\n    x = 1\n\n    return x\n'
    (node,) = ast.parse(source).body
    assert code_lines(node, source.splitlines()) == 2


@pytest.mark.parametrize("path", python_files(PACKAGE, ROOT / "benchmarks"), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_over_the_limit(path):
    assert long_functions(path) == []


def test_trainer_reads_in_one_sitting():
    assert len((PACKAGE / "trainer.py").read_text().splitlines()) <= MAX_TRAINER_LINES


def test_no_formatter_opt_outs():
    marker = "fmt: " + "skip"  # split so that this file does not match itself
    offenders = [str(p.relative_to(ROOT)) for p in python_files(PACKAGE, ROOT / "tests") if marker in p.read_text()]
    assert offenders == []


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the file's package
                package = path.parent.relative_to(ROOT / "src").parts
                module = ".".join(package[: len(package) - node.level + 1] + ((module,) if module else ()))
            names.add(module)
    return names


def test_nothing_outside_cli_imports_cli():
    outside = [p for p in python_files(PACKAGE, ROOT / "benchmarks") if "cli" not in p.relative_to(ROOT).parts]
    offenders = [str(p.relative_to(ROOT)) for p in outside if any(m.startswith("salt_hf.cli") for m in imports_of(p))]
    assert offenders == []


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT / "src").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(path: Path, source: str | None = None) -> list[str]:
    """
    The private names (one leading underscore) that the file at `path` takes from another salt_hf module: `from
    salt_hf.x import _name` (absolute or relative), and `module._name` on a salt_hf module it imported.
    """
    tree = ast.parse(path.read_text() if source is None else source)
    package = path.parent.relative_to(ROOT / "src").parts
    found, modules = [], set()  # the local names bound to salt_hf modules (or to anything imported from one)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ((base,) if base else ()))
            if base.startswith("salt_hf") and base != module_name(path):
                found += [f"from {base} import {a.name}" for a in node.names if is_private(a.name)]
                modules.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("salt_hf"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            if is_private(node.attr):
                found.append(f"{node.value.id}.{node.attr}")
    return [f"{path.relative_to(ROOT)}: {name}" for name in found]


@pytest.mark.parametrize(
    "source",
    [
        "from .chunks import _rowdot",
        "from salt_hf.losses.chunks import LossOptions, _rowdot",
        "from ..teacher import _x",
        "from . import chunks\nchunks._rowdot(a, b)",
        "import salt_hf.losses.chunks\nsalt_hf._version",
    ],
)
def test_private_import_checker_finds(source):
    assert len(private_imports(PACKAGE / "losses" / "logits.py", source)) == 1


def test_private_import_checker_allows_public_and_own_names():
    source = "from .chunks import LossOptions, check_inputs\nfrom salt_hf.losses.logits import _chunked_loss\n"
    source += "import torch\ntorch._dynamo.reset()\nfrom salt_hf import __version__\n"
    assert private_imports(PACKAGE / "losses" / "logits.py", source) == []


def test_no_private_name_crosses_modules_in_src():
    offenders = [line for path in python_files(PACKAGE) for line in private_imports(path)]
    assert offenders == []
