"""Checks of the per-rule conda envs in envs/ (conda cannot run on the test machines).

Each env file is Python and pip from conda-forge, both pinned, and every Python package from
PyPI by pip, pinned `==` (to requirements.txt's version where it lists the package): the cluster
runs the builds this suite runs. pip's resolver resolves each env's packages against the package
index without installing them (it needs the index: without one it fails in CI, skips elsewhere).
Each rule that runs code must name an env with `conda:`, and every third-party module its script
imports, directly or through the mindreader modules it uses, must come from a package of that env.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from conftest import REPO, parse_workflow
from rattler import MatchSpec


ENV_DIR = REPO / "envs"
ENV_FILES = sorted(ENV_DIR.glob("*.yaml"))
CONFIGS = [REPO / "config" / "config.yaml", REPO / "config" / "nsd.yaml"]

# What an env may take from conda-forge: the interpreter and pip. The Python packages come from
# PyPI by pip; a non-Python library that pip cannot bring would be added here, with its reason.
CONDA_PACKAGES = {"python", "pip"}
# The one pip option an env may carry: PyPI's torch is a CUDA 13.0 build, and a cluster with an
# older driver takes another CUDA build of the same version from PyTorch's index (README).
PYTORCH_INDEX = re.compile(r"--extra-index-url https://download\.pytorch\.org/whl/(?P<build>cu\d+|cpu)")
# Import name -> PyPI package name, where the two differ.
PACKAGE_OF_IMPORT = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "open_clip": "open-clip-torch",
    "pytorch_fid": "pytorch-fid",
}
# pandas imports these only inside the methods that need them: no import statement shows them.
IMPLIED_BY_CALL = {".to_markdown(": "tabulate", ".to_latex(": "jinja2", ".style.": "jinja2"}
# Modules the Snakemake script preamble provides to every script.
PROVIDED = {"snakemake", "mindreader"}
# pip's words when it could not reach an index at all (not when a pin does not exist).
NO_INDEX = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Name or service not known|Network is unreachable|No route to host|ConnectTimeoutError|"
    r"ReadTimeoutError|ProxyError|Connection refused|Could not fetch URL"
)


def load_env(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def conda_specs(env: dict) -> list[str]:
    return [dep for dep in env["dependencies"] if isinstance(dep, str)]


def pip_lines(env: dict) -> list[str]:
    return [line for dep in env["dependencies"] if isinstance(dep, dict) for line in dep.get("pip") or []]


def pip_specs(env: dict) -> list[str]:
    """The requirement lines of the env's pip section (its option lines left out)."""
    return [line for line in pip_lines(env) if not line.startswith("-")]


def pip_options(env: dict) -> list[str]:
    return [line for line in pip_lines(env) if line.startswith("-")]


def pinned_version(spec: str) -> Version | None:
    """The version of a `name==X.Y.Z` requirement line, None when it is not such a pin."""
    specifiers = list(Requirement(spec).specifier)
    if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
        return None
    return Version(specifiers[0].version)


def env_packages(env: dict) -> set[str]:
    names = {MatchSpec(spec).name.normalized for spec in conda_specs(env)}
    return names | {canonicalize_name(Requirement(spec).name) for spec in pip_specs(env)}


def requirement_pins() -> dict[str, Version]:
    """requirements.txt's `name==X` pins, by canonical name."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            specifiers = list(requirement.specifier)
            if len(specifiers) == 1 and specifiers[0].operator == "==":
                pins[canonicalize_name(requirement.name)] = Version(specifiers[0].version)
    return pins


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_file_is_python_from_conda_forge_and_pinned_packages_from_pip(env_file):
    env = load_env(env_file)
    assert set(env) <= {"name", "channels", "dependencies"}, f"{env_file}: unexpected keys {set(env)}"
    assert env["channels"] == ["conda-forge", "nodefaults"], f"{env_file}: channels must be conda-forge only"
    conda = {}
    for spec in conda_specs(env):
        match = MatchSpec(spec)
        assert str(match.version).startswith("==") and "*" not in str(match.version), (
            f"{env_file}: {spec!r} is not pinned to one version (write name==X.Y.Z)"
        )
        conda[match.name.normalized] = str(match.version).removeprefix("==")
    assert set(conda) == CONDA_PACKAGES, (
        f"{env_file}: conda must bring python and pip only, pinned (the Python packages come from "
        f"PyPI in the pip: section), not {sorted(conda)}"
    )
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert Version(conda["python"]).release[:2] == sys.version_info[:2], (
        f"{env_file}: python=={conda['python']}, but the tests (and the resolution below) run Python {running}"
    )
    sections = [dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict) and "pip" in dep]
    assert len(sections) == 1 and sections[0], f"{env_file}: one non-empty pip: section lists the packages"
    assert len(env["dependencies"]) == len(conda) + 1, f"{env_file}: dependencies are conda pins and one pip: section"
    for option in pip_options(env):
        assert PYTORCH_INDEX.fullmatch(option), (
            f"{env_file}: pip option {option!r}: the only one allowed is PyTorch's index, "
            "`--extra-index-url https://download.pytorch.org/whl/cuXXX` (README)"
        )
    names = []
    for spec in pip_specs(env):
        try:
            requirement = Requirement(spec)
        except InvalidRequirement as error:
            pytest.fail(f"{env_file}: pip {spec!r} is not a requirement: {error}")
        assert pinned_version(spec) is not None, (
            f"{env_file}: pip {spec!r} is not pinned to one version (write name==X.Y.Z)"
        )
        assert not requirement.extras and not requirement.marker and not requirement.url, (
            f"{env_file}: pip {spec!r}: a plain name==X.Y.Z, like requirements.txt's"
        )
        names.append(canonicalize_name(requirement.name))
    assert len(names) == len(set(names)), f"{env_file}: a package is listed twice in pip:"


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_match_requirements(env_file):
    """The envs run on the cluster the versions the test suite runs.

    A CUDA build from PyTorch's index (`torch==2.14.1+cu126`, README) is the same version: its
    local label must name the index the env adds, and every labelled pin must carry the same one.
    """
    pins = requirement_pins()
    env = load_env(env_file)
    indexes = {match["build"] for match in map(PYTORCH_INDEX.fullmatch, pip_options(env)) if match}
    labels = set()
    for spec in pip_specs(env):
        name, version = canonicalize_name(Requirement(spec).name), pinned_version(spec)
        if version is None:
            continue  # not a pin: test_env_file_is_python_from_conda_forge_and_pinned_packages_from_pip says so
        if name in pins:
            assert version.public == pins[name].public, (
                f"{env_file}: {spec} but requirements.txt has {name}=={pins[name]} (the version the tests run)"
            )
        if version.local:
            labels.add(version.local)
            assert version.local in indexes, (
                f"{env_file}: {spec} is a build from PyTorch's index: add "
                f"`--extra-index-url https://download.pytorch.org/whl/{version.local}` to pip:"
            )
    assert len(labels) <= 1, f"{env_file}: builds for different CUDA versions mixed: {sorted(labels)}"


def _no_index(reason: str) -> None:
    """No package index to resolve against: a failure in CI (CI set), where one must be reached."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must resolve the envs against the package index, but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory) -> dict[str, tuple[int, str, dict | None]]:
    """(pip's exit code, its stderr, its install report) of each env's pip section, resolved by
    the running Python's pip (the env's pip version) against the package index its configuration
    names, without installing anything; all envs at once, to save wall time.
    """
    root = tmp_path_factory.mktemp("resolve")
    processes = {}
    for env_file in ENV_FILES:
        env = load_env(env_file)
        requirements = root / f"{env_file.stem}.txt"
        requirements.write_text("\n".join(pip_lines(env)) + "\n")
        report = root / f"{env_file.stem}.json"
        listed = ",".join(Requirement(spec).name for spec in pip_specs(env))
        command = [
            sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
            "--disable-pip-version-check", "--timeout", "30", "--retries", "2",
            # the listed packages install from wheels: no compiler, no build on the cluster
            f"--only-binary={listed}",
            "--report", str(report), "-r", str(requirements),
        ]  # fmt: skip
        stderr = root / f"{env_file.stem}.stderr"
        with stderr.open("w") as sink:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sink)
        processes[env_file.name] = (report, stderr, process)
    results = {}
    try:
        for name, (report, stderr, process) in processes.items():
            process.wait(timeout=900)
            installs = json.loads(report.read_text()) if report.exists() else None
            results[name] = (process.returncode, stderr.read_text(), installs)
    finally:
        for _, _, process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


@pytest.mark.workflow
@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_resolves_to_the_versions_the_tests_run(env_file, resolutions):
    """pip's resolver finds every pinned package of the env, and a consistent set of dependencies
    around them, for this Python on this platform (the cluster's: Linux x86_64)."""
    returncode, stderr, report = resolutions[env_file.name]
    # (this machine's pip configuration names local indexes that lack most packages: noise)
    stderr = "\n".join(line for line in stderr.splitlines() if "is ignored: it is neither a file nor" not in line)
    if returncode != 0 and NO_INDEX.search(stderr):
        _no_index(f"pip could not reach the package index to resolve {env_file.name}:\n{stderr[-3000:]}")
    assert returncode == 0 and report is not None, (
        f"pip cannot resolve {env_file.name}'s pip section:\n{stderr[-6000:]}"
    )
    metadata = [item["metadata"] for item in report["install"]]
    resolved = {canonicalize_name(item["name"]): Version(item["version"]) for item in metadata}
    pins = requirement_pins()
    for spec in pip_specs(load_env(env_file)):
        name, version = canonicalize_name(Requirement(spec).name), pinned_version(spec)
        assert name in resolved, f"{env_file.name}: pip resolved no {name}"
        assert version is not None, f"{env_file.name}: {spec} is not pinned to one version"
        assert resolved[name] == version or (not version.local and resolved[name].public == version), (
            f"{env_file.name}: {spec} resolved to {resolved[name]}"
        )
        if name in pins:
            assert resolved[name].public == pins[name].public, (
                f"{env_file.name}: {name} resolved to {resolved[name]}, requirements.txt has {pins[name]}"
            )


def test_env_files_exist():
    assert ENV_FILES, "envs/ holds no env file"


@cache
def workflow_rules(configfile: Path) -> tuple[tuple[str, Path | None, Path | None, bool], ...]:
    """(name, env file, script, runs code) of every rule the workflow defines under ``configfile``."""
    rules = []
    for rule in parse_workflow(configfile).rules:
        base = Path(rule.snakefile).parent
        env = (base / rule.conda_env).resolve() if isinstance(rule.conda_env, str) else None
        script = (base / rule.script).resolve() if rule.script else None
        runs_code = not rule.norun
        rules.append((rule.name, env, script, runs_code))
    return tuple(rules)


def all_rules():
    seen = {}
    for configfile in CONFIGS:
        if configfile.exists():
            for rule in workflow_rules(configfile):
                seen.setdefault(rule[0], rule)
    return list(seen.values())


def _guard_is_optional(node: ast.AST, child: ast.AST) -> bool:
    """True when ``node`` only runs ``child`` if the module is already there or may be missing."""
    if isinstance(node, ast.Try) and child in node.body:
        for handler in node.handlers:
            names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            if any(isinstance(n, ast.Name) and n.id in {"ImportError", "ModuleNotFoundError"} for n in names):
                return True
    if isinstance(node, ast.If) and child in node.body:
        test = node.test  # `if "torch" in sys.modules:` imports only what someone else imported
        return isinstance(test, ast.Compare) and "sys.modules" in ast.unparse(test.comparators[0])
    return False


def _import_context(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> tuple[bool, str | None]:
    """(optional, name of the innermost function around the import or None at module level)."""
    function, child, parent = None, node, parents.get(node)
    while parent is not None:
        if _guard_is_optional(parent, child):
            return True, None
        if function is None and isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = parent.name
        child, parent = parent, parents.get(parent)
    return False, function


def _module_file(dotted: str) -> Path | None:
    """The file of a mindreader module (package __init__ or module file), None if it is not one."""
    path = REPO.joinpath(*dotted.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return None


def _used_names(tree: ast.AST, skip_functions: bool = False) -> set[str]:
    """Names and attribute names in ``tree``; with ``skip_functions``, outside its function bodies."""
    names, stack = set(), [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        if skip_functions and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node is not tree:
            stack.extend(node.decorator_list + node.args.defaults + [d for d in node.args.kw_defaults if d])
            continue
        stack.extend(ast.iter_child_nodes(node))
    return names


def _reachable_names(trees: list[ast.AST]) -> set[str]:
    """Names the reached code may call: those used outside any function body (module and class
    bodies) or in a method (many run without their name written: forward, __call__, run), and
    those used in the body of a function whose name is reachable, and so on."""
    bodies: dict[str, list[ast.AST]] = {}
    reachable: set[str] = set()
    for tree in trees:
        reachable |= _used_names(tree, skip_functions=True)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
                reachable |= {method.name for method in methods}
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                bodies.setdefault(node.name, []).append(node)
    queue = list(reachable)
    while queue:
        for body in bodies.get(queue.pop(), []):
            new = _used_names(body) - reachable
            reachable |= new
            queue.extend(new)
    return reachable


def _imports(tree: ast.AST, source: Path, module: str) -> list[tuple[str, str | None, bool]]:
    """(imported module, enclosing function or None, optional) for every import in ``tree``."""
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        optional, function = _import_context(node, parents)
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            # a name imported from a package may be a submodule of it
            targets = [target] + [f"{target}.{alias.name}" for alias in node.names if target.startswith("mindreader")]
        found.extend((target, function, optional) for target in targets)
    return found


def script_requirements(script: Path) -> dict[str, Path]:
    """Third-party module -> a file that needs it, over the script and the mindreader modules it reaches.

    An import inside a function counts when the code reached may call that function: its name is
    used outside any function, or in a function that may be called, and so on (a lazy import in
    a function the rule never calls needs nothing); optional imports never count.
    """
    trees: dict[Path, ast.AST] = {}
    imports: list[tuple[str, str | None, Path]] = []
    queue = [(script, "__script__")]
    while queue:
        source, module = queue.pop()
        if source in trees:
            continue
        trees[source] = ast.parse(source.read_text(), filename=str(source))
        for target, function, optional in _imports(trees[source], source, module):
            parts = target.split(".")
            if parts[0] == "mindreader":
                prefixes = (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                queue.extend((_module_file(p), p) for p in prefixes if _module_file(p))
            elif not optional and parts[0] != "__future__" and parts[0] not in sys.stdlib_module_names:
                imports.append((parts[0], function, source))
    used = _reachable_names(list(trees.values()))
    needed: dict[str, Path] = {}
    for name, function, source in imports:
        if function is None or function in used:
            needed.setdefault(name, source)
    for source in trees:
        text = source.read_text()
        for call, package_name in IMPLIED_BY_CALL.items():
            if call in text:
                needed.setdefault(package_name, source)
    return {name: path for name, path in needed.items() if name not in PROVIDED}


def test_the_workflow_has_rules():
    assert any(runs_code for _, _, _, runs_code in all_rules())


@pytest.mark.parametrize("rule", [r for r in all_rules() if r[3]], ids=lambda r: r[0])
def test_rule_names_an_env_that_covers_its_imports(rule):
    name, env_file, script, _ = rule
    assert env_file is not None, f"rule {name} names no conda env (add `conda: \"../envs/<kind>.yaml\"`)"
    assert env_file.parent == ENV_DIR and env_file.exists(), f"rule {name}: env {env_file} is not a file in envs/"
    if script is None:
        return
    packages = env_packages(load_env(env_file))
    missing = {
        module: path.relative_to(REPO)
        for module, path in script_requirements(script).items()
        if PACKAGE_OF_IMPORT.get(module, module).lower() not in packages
    }
    assert not missing, f"rule {name}: {env_file.name} lacks the packages of these imports (module: file): {missing}"


def test_import_analysis_counts_direct_and_called_lazy_imports_only(tmp_path):
    calls = tmp_path / "calls.py"
    calls.write_text("import h5py\nfrom mindreader.runtime import select_device\nselect_device('cpu')\n")
    assert {"h5py", "torch"} <= set(script_requirements(calls))
    uncalled = tmp_path / "uncalled.py"
    uncalled.write_text("from mindreader.runtime import setup_logging\nsetup_logging(None)\n")
    assert "torch" not in script_requirements(uncalled)
    optional = tmp_path / "optional.py"
    optional.write_text("try:\n    import tabulate\nexcept ImportError:\n    tabulate = None\ndf.to_latex()\n")
    assert set(script_requirements(optional)) == {"jinja2"}
    chain = tmp_path / "chain.py"  # only what the code run may call: main -> used, never helper
    chain.write_text(
        "def helper():\n    import h5py\n\ndef unused():\n    helper()\n\n"
        "def used():\n    import tqdm\n\ndef main():\n    used()\n\nmain()\n"
    )
    assert set(script_requirements(chain)) == {"tqdm"}
    method = tmp_path / "method.py"  # a method may run without its name written (forward)
    method.write_text("class Net:\n    def forward(self):\n        import scipy\n")
    assert set(script_requirements(method)) == {"scipy"}
