"""Run a generator stage in this process, or across GPUs with torchrun inside one job.

``launch(job, gpus, device)`` runs the stage in-process for one GPU or the CPU; for gpus > 1 it
writes the job to a JSON file and starts ``torchrun --standalone --nproc_per_node=gpus -m
mindreader.generator.launch job.json``: one process per GPU, NCCL, each running the same
``stages.run``. A stop on SIGTERM (the job's time limit) exits with EXIT_INTERRUPTED after
checkpointing, and the rerun resumes.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from mindreader.checkpoint import EXIT_INTERRUPTED, TrainingInterrupted
from mindreader.generator.stages import run
from mindreader.runtime import cuda_diagnosis, select_device, setup_logging

log = logging.getLogger(__name__)


def launch(job: dict, gpus: int, device: str) -> None:
    """Run ``job`` on ``gpus`` GPUs (torchrun when > 1) or on ``device`` in this process."""
    if gpus <= 1:
        run(job, select_device(device, gpus))
        return
    if not torch.cuda.is_available() or torch.cuda.device_count() < gpus:
        own = job["stage"] == "pretrain" and job["generator"]["pretrain"].get("gpus") is not None
        key = "generator.pretrain.gpus" if own else "generator.gpus"
        raise RuntimeError(
            f"{key} = {gpus} but {torch.cuda.device_count()} CUDA device(s) are visible: "
            f"{cuda_diagnosis()}"
        )
    Path(job["checkpoint_dir"]).mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=job["checkpoint_dir"], delete=False) as f:
        json.dump(job, f)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "-m",
        "mindreader.generator.launch",
        f.name,
    ]
    log.info("starting %d processes: %s", gpus, " ".join(cmd))
    try:
        code = subprocess.run(cmd).returncode
    finally:
        os.unlink(f.name)
    if code == EXIT_INTERRUPTED:
        raise TrainingInterrupted("a worker stopped on a signal after checkpointing; rerun to resume")
    if code != 0:
        raise RuntimeError(f"torchrun failed with exit status {code} (see the log above)")


def main(job_file: str) -> int:
    """torchrun worker: one process per GPU (NCCL), or per CPU process with gloo."""
    job = json.loads(Path(job_file).read_text())
    setup_logging(None)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    try:
        run(job, device)
    except TrainingInterrupted as err:
        log.warning("%s", err)
        return EXIT_INTERRUPTED
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
