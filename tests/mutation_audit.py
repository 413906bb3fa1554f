"""One-line mutation audit of the modules whose outputs the paper's tables report (issue 23).

For each module of MODULES, every mutant a small set of AST operators makes (one change on one
line: a comparison, arithmetic or boolean operator flipped, a number changed, a transpose or an
axis swapped ...) is applied alone to a temporary copy of the `mindreader` package, and the
module's test files run against that copy (`pytest -x`). A mutant the tests fail on (or time out
on) is killed; one they pass survives: a change to the code no test notices. The repository's
own files are never written.

    .venv/bin/python tests/mutation_audit.py                      # every module (`make mutants`)
    .venv/bin/python tests/mutation_audit.py --modules metrics evaluation/bootstrap --limit 20
    .venv/bin/python tests/mutation_audit.py --list               # the mutants only, no test runs

Not collected by pytest (the name has no test_ prefix): the full audit (about 1,300 mutants)
takes hours on two cores. `--limit N` runs N mutants per module, evenly spread over the module,
always the same ones for the same sources (`--limit 30`: 330 mutants, about half an hour).

Each test run is a fork of the audit process, which has imported the heavy third-party libraries
(PRELOAD) once and puts the copy first on sys.path (and on PYTHONPATH, for the Python processes
the tests start); only `mindreader`, the mutated copy, and the test files are imported afresh. A
test that starts Python with the repository as working directory (test_mappers' SIGTERM test:
`python -c`, which puts the working directory first) imports the unmutated package: it cannot
kill a mutant, it only costs time.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "mindreader"
DEFAULT_TIMEOUT_S = 120
# Third-party modules the mapped tests import: loaded once, before the first test run forks.
PRELOAD = (
    "numpy",
    "scipy.linalg",
    "scipy.ndimage",
    "torch",
    "torchvision",
    "sklearn.linear_model",
    "sklearn.model_selection",
    "pandas",
    "h5py",
    "PIL.Image",
    "skimage.metrics",
    "safetensors.torch",
    "yaml",
)


@dataclass(frozen=True)
class Target:
    """A module under audit: the tests that speak for it and, optionally, the functions whose
    mutants count (qualified names; empty: the whole module)."""

    tests: tuple[str, ...]
    scope: tuple[str, ...] = ()


MODULES: dict[str, Target] = {
    "mindreader/metrics.py": Target(("tests/test_metrics.py", "tests/test_evaluation_battery.py")),
    "mindreader/evaluation/bootstrap.py": Target(("tests/test_metrics.py", "tests/test_scene_recovery.py")),
    "mindreader/evaluation/battery.py": Target(("tests/test_evaluation_battery.py", "tests/test_oracle.py")),
    "mindreader/evaluation/scenes.py": Target(("tests/test_scene_recovery.py", "tests/test_probes.py")),
    "mindreader/evaluation/probes.py": Target(("tests/test_probes.py",)),
    "mindreader/mappers/losses.py": Target(("tests/test_mappers.py",)),
    "mindreader/mappers/retrieval.py": Target(("tests/test_mappers.py",)),
    "mindreader/generator/loss.py": Target(
        ("tests/test_generator_loss.py", "tests/test_generator_properties.py", "tests/test_generator_saved_tensors.py")
    ),
    "mindreader/generator/training.py": Target(
        ("tests/test_generator_loss.py", "tests/test_generator_training.py"),
        scope=(
            "update_ema",
            "ema_beta",
            "Trainer.train_step",
            "Trainer.modules",
            "Trainer.optimizers",
            "Trainer.save",
            "Trainer.try_resume",
            "Trainer.crossed",
            "Trainer.train",
        ),
    ),
    "mindreader/generator/reconstruct.py": Target(("tests/test_oracle.py", "tests/test_generator_properties.py")),
    "mindreader/weights.py": Target(("tests/test_weights.py", "tests/test_evaluation_battery.py")),
}

# Calls whose arguments only reach a log, the terminal or a progress bar (`bar`: the training
# loop's tqdm bar): their mutants change no number or file.
SILENT_CALLS = {"print", "tqdm"}
SILENT_RECEIVERS = {"log", "logging", "warnings", "bar"}

COMPARE_FLIPS = {
    ast.Lt: (ast.LtE, ast.GtE),
    ast.LtE: (ast.Lt, ast.Gt),
    ast.Gt: (ast.GtE, ast.LtE),
    ast.GtE: (ast.Gt, ast.Lt),
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
}
BINOP_SWAPS = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.Pow: ast.Mult,
}
AXIS_KEYWORDS = {"axis", "dim"}


@dataclass(frozen=True)
class Mutant:
    module: str  # repository-relative path
    index: int  # position in the module's deterministic order
    line: int
    column: int  # 1-based, in UTF-8 bytes as the AST counts
    operator: str
    original: str  # the source text replaced
    mutated: str  # what replaces it
    source: str  # the whole mutated module

    @property
    def label(self) -> str:
        return f"{self.module}:{self.line}:{self.column}  {self.original}  ->  {self.mutated}  [{self.operator}]"


def _number_variants(value: int | float) -> list[int | float]:
    """c + 1, 2c, c / 2 (floats), 0: off-by-one, scale and absent constants."""
    candidates = [value + 1, value * 2, 0]
    if isinstance(value, float):
        candidates.append(value / 2)
    unique = []
    for c in candidates:
        if c != value and c not in unique:
            unique.append(type(value)(c))
    return unique


def _variants(node: ast.AST) -> list[tuple[str, ast.AST]]:
    """(operator name, mutated copy) for every mutation of ``node`` itself (not its children)."""
    out: list[tuple[str, ast.AST]] = []

    def mutated(change) -> ast.AST:
        new = copy.deepcopy(node)
        change(new)
        return new

    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for flip in COMPARE_FLIPS.get(type(op), ()):
                out.append(("compare", mutated(lambda n, i=i, flip=flip: n.ops.__setitem__(i, flip()))))
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS and not _is_text(node):
        out.append(("arithmetic", mutated(lambda n: setattr(n, "op", BINOP_SWAPS[type(node.op)]()))))
    elif isinstance(node, ast.AugAssign) and type(node.op) in BINOP_SWAPS:
        out.append(("arithmetic", mutated(lambda n: setattr(n, "op", BINOP_SWAPS[type(node.op)]()))))
    elif isinstance(node, ast.BoolOp):
        swap = ast.Or if isinstance(node.op, ast.And) else ast.And
        out.append(("boolean", mutated(lambda n: setattr(n, "op", swap()))))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        out.append(("unary", node.operand))
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        out.append(("boolean", ast.Constant(not node.value)))
    elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        out.extend(("number", ast.Constant(value)) for value in _number_variants(node.value))
    elif isinstance(node, ast.Attribute) and node.attr == "T":
        out.append(("transpose", node.value))
    elif (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "t" and not node.args
    ):
        out.append(("transpose", node.func.value))
    elif isinstance(node, ast.keyword) and node.arg in AXIS_KEYWORDS and _small_int(node.value) is not None:
        other = 1 - _small_int(node.value)
        out.append(("axis", ast.keyword(arg=node.arg, value=ast.Constant(other))))
    elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple) and len(node.slice.elts) == 2:
        first, second = node.slice.elts
        if _is_none(first) != _is_none(second):  # x[None, :] <-> x[:, None]
            out.append(("axis", mutated(lambda n: n.slice.elts.reverse())))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult) and _is_transpose(node.right):
        # a @ b.T -> b @ a.T: the transposed product (the other direction of a similarity matrix)
        swapped = ast.BinOp(left=_untransposed(node.right), op=ast.MatMult(), right=ast.Attribute(node.left, "T"))
        out.append(("transpose", swapped))
    return out


def _is_text(node: ast.BinOp) -> bool:
    """String concatenation or %-formatting: its mutants only change text."""
    return any(
        isinstance(side, ast.JoinedStr) or (isinstance(side, ast.Constant) and isinstance(side.value, str))
        for side in (node.left, node.right)
    )


def _small_int(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and node.value in (0, 1) and not isinstance(node.value, bool):
        return node.value
    return None


def _is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _is_transpose(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "T") or (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "t" and not node.args
    )


def _untransposed(node: ast.AST) -> ast.AST:
    return node.value if isinstance(node, ast.Attribute) else node.func.value


def _is_silent_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in SILENT_CALLS
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in SILENT_RECEIVERS


class _Collector(ast.NodeVisitor):
    """Mutable nodes on one line each, outside messages and annotations, with the qualified name of
    the function around them (docstrings and other strings are never mutated)."""

    def __init__(self):
        self.found: list[tuple[ast.AST, str]] = []
        self.names: list[str] = []

    def generic_visit(self, node):
        if isinstance(node, (ast.Raise, ast.JoinedStr)) or _is_silent_call(node):
            return  # error messages, f-strings, log and progress output
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.names.append(node.name)
            for child in ast.iter_child_nodes(node):
                if child is not getattr(node, "returns", None) and not isinstance(child, ast.arguments):
                    self.visit(child)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._visit_defaults(node.args)
            self.names.pop()
            return
        if isinstance(node, ast.AnnAssign):
            for child in (node.target, node.value):
                if child is not None:
                    self.visit(child)
            return
        if getattr(node, "lineno", None) is not None and node.lineno == node.end_lineno:
            self.found.append((node, ".".join(self.names)))
        super().generic_visit(node)

    def _visit_defaults(self, args: ast.arguments) -> None:
        for default in [*args.defaults, *args.kw_defaults]:
            if default is not None:
                self.visit(default)


def _mutated_source(lines: list[bytes], node: ast.AST, text: str) -> bytes:
    """The source with ``node``'s span (one line; columns are UTF-8 byte offsets) replaced by ``text``."""
    row = node.lineno - 1
    line = lines[row]
    return b"".join(
        [*lines[:row], line[: node.col_offset] + text.encode() + line[node.end_col_offset :], *lines[row + 1 :]]
    )


def _replacement_text(node: ast.AST) -> str:
    """Source of a mutated node, parenthesised unless it is an atom (precedence-safe in place)."""
    text = ast.unparse(node)
    if isinstance(node, ast.keyword):
        return text
    atom = isinstance(node, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)) or (
        isinstance(node, ast.Constant) and not (isinstance(node.value, (int, float)) and node.value < 0)
    )
    return text if atom or isinstance(node, ast.stmt) else f"({text})"


def mutants_of(module: str, scope: tuple[str, ...] = ()) -> list[Mutant]:
    """Every mutant of ``module`` (repository-relative), deterministic order (line, column, operator)."""
    source = (REPO / module).read_bytes()
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    original_dump = ast.dump(ast.parse(source))
    collector = _Collector()
    collector.visit(tree)
    candidates = []
    for node, where in collector.found:
        if scope and not any(where == name or where.startswith(name + ".") for name in scope):
            continue
        span = lines[node.lineno - 1][node.col_offset : node.end_col_offset].decode()
        for operator, replacement in _variants(node):
            text = _replacement_text(replacement)
            mutated = _mutated_source(lines, node, text)
            candidates.append((node.lineno, node.col_offset, operator, text, span, mutated))
    candidates.sort(key=lambda c: c[:4])
    mutants, seen = [], set()
    for line, column, operator, text, span, mutated in candidates:
        try:
            changed = ast.dump(ast.parse(mutated)) != original_dump
        except SyntaxError:
            continue
        if changed and mutated not in seen:
            seen.add(mutated)
            mutants.append(Mutant(module, len(mutants), line, column + 1, operator, span, text, mutated.decode()))
    return mutants


def evenly_spread(items: list, limit: int | None) -> list:
    """``limit`` items spread evenly over ``items`` (all of them when limit is None or larger)."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


# --- running the tests ------------------------------------------------------------------------


def run_tests(tests: list[str], timeout_s: int) -> tuple[str, float]:
    """('passed' | 'failed' | 'timeout' | 'error', seconds) of ``tests`` in a forked pytest run,
    which imports the package from the copy that `use_copy` put first on the path."""
    sys.stdout.flush()
    sys.stderr.flush()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.setsid()  # its own process group: a timeout kills whatever the tests started too
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.chdir(REPO)
            code = int(pytest.main([*tests, "-x", "-q", "-p", "no:cacheprovider"]))
        finally:
            os._exit(code)
    deadline = start + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - start
        time.sleep(0.1)
    # 1: a test failed; 2: collection or import failed (the mutant broke the module)
    outcome = {0: "passed", 1: "failed", 2: "failed"}.get(os.waitstatus_to_exitcode(status), "error")
    return outcome, time.monotonic() - start


def use_copy(copy_root: Path) -> None:
    """Make the package copy in ``copy_root`` the one every test run imports, the test runs
    forked from here and the Python processes they start; preload the third-party libraries."""
    if PACKAGE in sys.modules:
        raise SystemExit(f"{PACKAGE} was imported before its copy was put first on the path")
    sys.path.insert(0, str(copy_root))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy_root), os.environ.get("PYTHONPATH")]))
    # no bytecode next to the copy: a mutated file of the same size and mtime would reuse it
    sys.dont_write_bytecode = True
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    origin = Path(importlib.util.find_spec(PACKAGE).origin)
    if not origin.is_relative_to(copy_root):
        raise SystemExit(f"the tests would import {origin}, not the copy in {copy_root}")
    for name in PRELOAD:
        importlib.import_module(name)
    if PACKAGE in sys.modules:
        raise SystemExit(f"preloading {PRELOAD} imported {PACKAGE}: the test runs would not see the mutants")


def _digest(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update((REPO / path).read_bytes())
    return digest.hexdigest()


def audit(modules: list[str], limit: int | None, timeout_s: int) -> list[dict]:
    """Run every selected mutant of each module; a result row per module with its mutants."""
    results = []
    before = _digest(modules)
    with tempfile.TemporaryDirectory(prefix="mutation-audit-") as tmp:
        copy_root = Path(tmp)
        shutil.copytree(REPO / PACKAGE, copy_root / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
        use_copy(copy_root)
        for module in modules:
            target = MODULES[module]
            tests = [t for t in target.tests if (REPO / t).exists()]
            absent = sorted(set(target.tests) - set(tests))
            mutants = evenly_spread(mutants_of(module, target.scope), limit)
            row = {"module": module, "tests": tests, "absent_tests": absent, "mutants": [], "baseline": None}
            results.append(row)
            print(f"\n{module}: {len(mutants)} mutants, tests {' '.join(tests) or '(none)'}", flush=True)
            if absent:
                print(f"  (test files not found, left out: {' '.join(absent)})", flush=True)
            if tests:
                outcome, seconds = run_tests(tests, timeout_s)
                row["baseline"] = {"outcome": outcome, "seconds": round(seconds, 1)}
                if outcome != "passed":
                    print(f"  the unmutated tests {outcome}: module skipped", flush=True)
                    continue
            mutated_file = copy_root / module
            original = mutated_file.read_bytes()
            try:
                for mutant in mutants:
                    mutated_file.write_text(mutant.source)
                    outcome, seconds = run_tests(tests, timeout_s) if tests else ("passed", 0.0)
                    status = {"passed": "survived", "failed": "killed", "timeout": "killed"}.get(outcome, "error")
                    row["mutants"].append(
                        {**_public(mutant), "outcome": outcome, "status": status, "seconds": round(seconds, 1)}
                    )
                    print(f"  {status:8s} {seconds:6.1f}s  {mutant.label}", flush=True)
            finally:
                mutated_file.write_bytes(original)
    if _digest(modules) != before:
        print("\nWARNING: a module under audit changed in the repository while the audit ran", flush=True)
    return results


def _public(mutant: Mutant) -> dict:
    """The mutant as the JSON results hold it: everything but the mutated source, plus its label."""
    record = asdict(mutant)
    del record["source"]
    return {**record, "label": mutant.label}


def report(results: list[dict]) -> None:
    print(f"\n{'module':42s} {'mutants':>7s} {'killed':>6s} {'survived':>8s} {'errors':>6s} {'kill rate':>9s}")
    totals = [0, 0, 0, 0]
    for row in results:
        statuses = [m["status"] for m in row["mutants"]]
        counts = [len(statuses), statuses.count("killed"), statuses.count("survived"), statuses.count("error")]
        totals = [a + b for a, b in zip(totals, counts)]
        print(f"{row['module']:42s} {counts[0]:7d} {counts[1]:6d} {counts[2]:8d} {counts[3]:6d} {_rate(counts):>9s}")
    print(f"{'all':42s} {totals[0]:7d} {totals[1]:6d} {totals[2]:8d} {totals[3]:6d} {_rate(totals):>9s}")
    for row in results:
        survivors = [m for m in row["mutants"] if m["status"] != "killed"]
        if survivors:
            print(f"\nnot killed in {row['module']}:")
            for m in survivors:
                print(f"  {m['status']:8s} {m['label']}")


def _rate(counts: list[int]) -> str:
    return f"{100.0 * counts[1] / counts[0]:.1f} %" if counts[0] else "-"


def _module_path(name: str) -> str:
    """A module as MODULES names it, from its path or a short form ('evaluation/bootstrap', 'bootstrap')."""
    for module in MODULES:
        short = module.removeprefix(f"{PACKAGE}/").removesuffix(".py")
        if name in (module, module.removesuffix(".py"), short, Path(module).stem):
            return module
    raise SystemExit(f"unknown module '{name}'; choose from {', '.join(MODULES)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="+", help="modules to audit (default: all of MODULES)")
    parser.add_argument("--limit", type=int, help="mutants per module, spread evenly (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT_S, help="seconds per mutant (killed after)")
    args = parser.parse_args(argv)
    modules = [_module_path(m) for m in args.modules] if args.modules else list(MODULES)
    if args.list:
        for module in modules:
            mutants = evenly_spread(mutants_of(module, MODULES[module].scope), args.limit)
            print(f"{module}: {len(mutants)} mutants")
            for mutant in mutants:
                print(f"  #{mutant.index:<4d} {mutant.label}")
        return
    start = time.monotonic()
    results = audit(modules, args.limit, args.timeout)
    report(results)
    print(f"\naudit wall time {time.monotonic() - start:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
