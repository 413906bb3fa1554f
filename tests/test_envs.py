"""Offline checks of the per-rule conda envs in envs/ (conda cannot run on the test machines).

Each env file must be a well-formed conda env with exact pins that parse as conda match specs
(py-rattler) and agree with requirements.txt, the versions this suite runs. Each rule that runs
code must name an env with `conda:`, and every third-party module its script imports, directly
or through the mindreader modules it uses, must come from a package of that env.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from conftest import REPO, parse_workflow
from rattler import MatchSpec


ENV_DIR = REPO / "envs"
ENV_FILES = sorted(ENV_DIR.glob("*.yaml"))
CONFIGS = [REPO / "config" / "config.yaml", REPO / "config" / "nsd.yaml"]

# Import name -> package name (conda-forge and PyPI agree on these), where the two differ.
PACKAGE_OF_IMPORT = {
    "torch": "pytorch",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "open_clip": "open-clip-torch",
    "pytorch_fid": "pytorch-fid",
}
# Conda package name -> its name in requirements.txt (PyPI), where the two differ.
PYPI_NAME = {"pytorch": "torch", "pytorch-gpu": "torch", "open-clip-torch": "open-clip-torch"}
# pandas imports these only inside the methods that need them: no import statement shows them.
IMPLIED_BY_CALL = {".to_markdown(": "tabulate", ".to_latex(": "jinja2", ".style.": "jinja2"}
# Modules the Snakemake script preamble provides to every script.
PROVIDED = {"snakemake", "mindreader"}


def load_env(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def conda_specs(env: dict) -> list[str]:
    return [dep for dep in env["dependencies"] if isinstance(dep, str)]


def pip_specs(env: dict) -> list[str]:
    return [spec for dep in env["dependencies"] if isinstance(dep, dict) for spec in dep.get("pip", [])]


def env_packages(env: dict) -> set[str]:
    names = {MatchSpec(spec).name.normalized for spec in conda_specs(env)}
    return names | {Requirement(spec).name.lower() for spec in pip_specs(env)}


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            pins[requirement.name.lower()] = str(requirement.specifier)
    return pins


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_file_is_a_pinned_conda_env(env_file):
    env = load_env(env_file)
    assert set(env) <= {"name", "channels", "dependencies"}, f"{env_file}: unexpected keys {set(env)}"
    assert env["channels"] == ["conda-forge", "nodefaults"], f"{env_file}: channels must be conda-forge only"
    for spec in conda_specs(env):
        match = MatchSpec(spec)
        assert str(match.version).startswith("==") and "*" not in str(match.version), (
            f"{env_file}: {spec!r} is not pinned to one version (write name==X.Y.Z)"
        )
    assert any(MatchSpec(s).name.normalized == "python" for s in conda_specs(env)), f"{env_file}: pin python"
    pip = pip_specs(env)
    if pip:
        assert "pip" in {MatchSpec(s).name.normalized for s in conda_specs(env)}, f"{env_file}: pin pip itself"
    for spec in pip:
        specifier = str(Requirement(spec).specifier)
        assert specifier.startswith("==") and "*" not in specifier, f"{env_file}: pip {spec!r} is not pinned"


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_match_requirements(env_file):
    """The envs run on the cluster what the test suite runs here."""
    pins = requirement_pins()
    env = load_env(env_file)
    specs = [(MatchSpec(s).name.normalized, str(MatchSpec(s).version)) for s in conda_specs(env)]
    specs += [(Requirement(s).name.lower(), str(Requirement(s).specifier)) for s in pip_specs(env)]
    for name, version in specs:
        pypi = PYPI_NAME.get(name, name)
        if pypi in pins:
            assert version == pins[pypi], f"{env_file}: {name}{version} but requirements.txt has {pypi}{pins[pypi]}"


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


def _used_names(tree: ast.AST) -> set[str]:
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    return names | {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}


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

    An import inside a function counts when that function's name is used in any file reached
    (a lazy import of a function the rule never calls needs nothing); optional imports never count.
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
    used = set().union(*(_used_names(tree) for tree in trees.values()))
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
