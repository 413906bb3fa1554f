"""Training checkpoints that survive SIGTERM and resume exactly.

A checkpoint is a folder with ``tensors.safetensors`` (model, EMA, optimiser tensors, torch RNG
state) and ``state.json`` (step, optimiser hyper-parameters, NumPy/Python RNG states, anything
JSON). Both are written atomically, tensors first, so ``state.json`` only ever names a complete
tensor file. Nothing is unpickled when loading.

Cluster jobs get SIGTERM at their time limit or on preemption. ``StopOnSignal`` turns it into a
flag the training loop polls between steps; the loop saves and raises ``TrainingInterrupted``,
the job exits non-zero, and the retry resumes from the checkpoint. Keep checkpoint folders out
of a rule's declared outputs: Snakemake deletes those when a job fails.

A training job leaves its checkpoint folder in place, with a record of the outputs it wrote
(``record_outputs``): the scheduler can still fail a job that has written everything (a time
limit that strikes while the job exits), Snakemake then deletes the outputs, and the rerun
resumes from the checkpoint instead of training anew (the generator saves one at its last step,
so its rerun only writes the outputs; a mapper's redoes the steps after its last periodic one).
The workflow removes the folders of accepted outputs once it has succeeded
(``remove_finished_checkpoints``).
"""

from __future__ import annotations

import copy
import logging
import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mindreader.io import atomic_path, read_json, write_json
from mindreader.names import TRAINING_RULES

log = logging.getLogger(__name__)

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
OUTPUTS_FILE = "outputs.json"
# Exit status of a run that stopped on SIGTERM after checkpointing (128 + SIGTERM, as a shell reports it).
EXIT_INTERRUPTED = 128 + signal.SIGTERM


class TrainingInterrupted(Exception):
    """Raised by a training loop after it checkpointed on a stop signal."""


class StopOnSignal:
    """Context manager: while active, SIGTERM/SIGINT set ``requested`` instead of killing."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):  # noqa: ARG002 - signal handler signature
        log.warning("received %s: will checkpoint and stop after this step", signal.Signals(signum).name)
        self.requested = True

    def __enter__(self) -> "StopOnSignal":
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def flatten_tensors(prefix: str, tree: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Flatten a nested dict of tensors into ``prefix.key.subkey`` names for safetensors."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, torch.Tensor):
            flat[name] = value.detach().cpu().contiguous()
        elif isinstance(value, Mapping):
            flat.update(flatten_tensors(name, value))
        else:
            raise TypeError(f"{name}: expected a tensor or a dict of tensors, got {type(value).__name__}")
    return flat


def unflatten_tensors(prefix: str, flat: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors stored under ``prefix.``, with the prefix removed (one level, for state dicts)."""
    start = prefix + "."
    return {name[len(start) :]: t for name, t in flat.items() if name.startswith(start)}


def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state dict into tensors (per-parameter state) and JSON (param groups)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in sd["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, prefix: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Inverse of ``optimizer_state``."""
    state: dict[int, dict[str, Any]] = {}
    start = prefix + "."
    for name, value in tensors.items():
        if name.startswith(start):
            index, key = name[len(start) :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": copy.deepcopy(meta["param_groups"])})


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG a training loop may draw from: torch (CPU, CUDA), NumPy's global, Python's."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    np_state = np.random.get_state()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    return tensors, meta


def set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(directory: str | os.PathLike, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> None:
    """Write a checkpoint atomically: tensors first, then the JSON state that points at them."""
    directory = Path(directory)
    with atomic_path(directory / TENSORS_FILE) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    write_json(directory / STATE_FILE, dict(state))
    log.info("checkpoint saved to %s (step %s)", directory, state.get("step"))


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The checkpoint in ``directory``, or None if there is none yet."""
    directory = Path(directory)
    if not (directory / STATE_FILE).exists():
        return None
    state = read_json(directory / STATE_FILE)
    try:
        tensors = load_file(str(directory / TENSORS_FILE))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise ValueError(f"{directory / TENSORS_FILE}: unreadable checkpoint tensors ({err})") from err
    log.info("resuming from checkpoint %s (step %s)", directory, state.get("step"))
    return tensors, state


def record_outputs(directory: str | os.PathLike, outputs: list[str]) -> None:
    """Note in a training's checkpoint folder that its job has written ``outputs`` (paths as the
    workflow names them, relative to its working directory). A fit that checkpoints nothing
    (ridge) has no folder, and nothing to keep."""
    if Path(directory).is_dir():
        write_json(Path(directory) / OUTPUTS_FILE, {"outputs": [str(path) for path in outputs]})


def forget_outputs(directory: str | os.PathLike) -> None:
    """Drop the record of a previous job's outputs: a job starting in this folder writes them anew."""
    (Path(directory) / OUTPUTS_FILE).unlink(missing_ok=True)


def add_failure_retries(rules, retries: int) -> None:
    """Add a run's ``retries`` (--retries, the profile's) to the retries of each training rule
    among the workflow's ``rules``, which are one per further time chunk of its training (the
    rule's ``retries:``, rules/common.smk). A rule's ``retries:`` replaces the run's, and a run's
    settings are not known yet when its rules are defined: the Snakefile calls this when the run
    starts (onstart; a cluster job runs no hooks, so there a crash is never retried in place)."""
    for rule in rules:
        if rule.name in TRAINING_RULES:
            rule.restart_times = rule.restart_times + retries


def remove_finished_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Remove each checkpoint folder under ``root`` whose recorded outputs all exist, and the
    folders above it that this leaves empty; the checkpoint folders removed. Call it when the
    workflow has succeeded: every such output was then accepted."""
    root = Path(root)
    removed = []
    for record in sorted(root.rglob(OUTPUTS_FILE)):
        if all(Path(path).exists() for path in read_json(record)["outputs"]):
            shutil.rmtree(record.parent)
            removed.append(record.parent)
            parent = record.parent.parent
            while parent != root and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
    return removed
