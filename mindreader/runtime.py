"""Process-level set-up shared by the entry points: logging, seeding, threads, device."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import numpy as np

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Log to ``log_file`` (the rule's ``log:``) and stderr; route warnings and tqdm there too.

    Snakemake shows stderr of local jobs in the terminal, so a person sees progress live while
    the log file keeps everything for later.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)
    logging.captureWarnings(True)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch (if imported) and return a NumPy generator for the caller."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)
    return np.random.default_rng(seed)


def set_threads(threads: int | None) -> None:
    """Limit torch's intra-op threads to what the job was given (Snakemake's ``threads``)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def select_device(requested: str = "auto", gpus: int = 0):
    """The torch device of a job that asked its scheduler for ``gpus`` GPUs (its ``gpu`` resource).

    ``auto``: CUDA when the job asked for a GPU, the CPU when it asked for none. A job that asked
    for a GPU and sees no usable one fails here, at once, rather than running for days on the CPU;
    ``cpu`` runs it on the CPU on purpose (the demo). ``cuda[:N]`` asks for CUDA whatever the job
    asked for, and fails the same way without it.
    """
    import torch

    if requested == "auto":
        requested = "cuda" if int(gpus or 0) > 0 else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device '{requested}' is needed (the job asked for {int(gpus or 0)} GPU(s)) but no "
            f"usable CUDA device is visible: {cuda_diagnosis()}. Set `device: cpu` in the config "
            "to run this job on the CPU on purpose."
        )
    return device


def cuda_diagnosis() -> str:
    """Why CUDA may be missing: torch's CUDA build, the driver's CUDA version, the visible devices."""
    import torch

    build = torch.version.cuda or "none (a CPU-only build of torch)"
    return (
        f"torch {torch.__version__} is built for CUDA {build}; the driver supports "
        f"{driver_cuda_version() or 'no CUDA (no NVIDIA driver found)'}; "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}"
    )


def driver_cuda_version() -> str | None:
    """The highest CUDA version the installed NVIDIA driver supports ("12.4"), or None without one."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            libcuda = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) == 0:
            return f"{version.value // 1000}.{version.value % 1000 // 10}"
    return None
