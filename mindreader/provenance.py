"""What produced an output: resolved config, package versions, git commit, seed.

Every rule writes ``<output stem>.provenance.json`` next to its main output (for an output
folder, ``provenance.json`` inside it), so a table or a checkpoint found on disk months later
still says how it was made.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from mindreader.io import write_json

# Packages whose versions change results; recorded when installed.
TRACKED_PACKAGES = (
    "mindreader",
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "h5py",
    "nibabel",
    "open-clip-torch",
    "pytorch-fid",
    "scikit-learn",
    "scikit-image",
    "snakemake",
)


def provenance_path(output: str | os.PathLike) -> Path:
    """Where the provenance of ``output`` goes: beside a file, inside a folder."""
    output = Path(output)
    if output.is_dir() or not output.suffix:
        return output / "provenance.json"
    return output.with_name(output.name.split(".")[0] + ".provenance.json")


def git_commit(repo: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout this package runs from (with '-dirty' if modified), or None."""
    repo = Path(repo) if repo else Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def collect(config: Mapping[str, Any] | None = None, seed: int | None = None, **extra: Any) -> dict:
    """The provenance record: who, when, with what, from which config."""
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "argv": sys.argv,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "seed": seed,
        "config": dict(config) if config is not None else None,
        **extra,
    }


def write_provenance(
    output: str | os.PathLike, config: Mapping[str, Any] | None = None, seed: int | None = None, **extra: Any
) -> Path:
    """Write the provenance of ``output`` and return its path."""
    path = provenance_path(output)
    write_json(path, collect(config, seed, output=os.fspath(output), **extra))
    return path
