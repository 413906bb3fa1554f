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


def select_device(requested: str = "auto"):
    """``auto`` picks CUDA when there is a GPU, else the CPU; ``cpu``/``cuda[:N]`` force one."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{requested}' was asked for but no CUDA GPU is visible")
    return device
