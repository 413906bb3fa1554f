"""Benchmark: preparing one full-size NSD session (81 x 104 x 83 voxels x 750 trials, int16,
gzipped NIfTI, written here) - the project's preparation against (a) the naive approach
(nibabel get_fdata() of the whole session, then mask), (b) reading the int16 data whole, then
masking, and the floor: only decompressing the file.

Each method runs in its own subprocess, so its peak RSS (getrusage) is its own; time is the
work only, after imports. Usage: .venv/bin/python bench/prepare.py [--workdir DIR] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

VOLUME = (81, 104, 83)  # subj01's functional volume at 1.8 mm
TRIALS = 750  # one NSD session
ROI_VOXELS = 15724  # subj01's nsdgeneral count
N_IMAGES = 250  # 3 repeats each fill one session
N_SHARED = 50
METHODS = ("floor", "int16_whole", "naive_get_fdata", "project_stream", "project_prepare")


def write_session_tree(root: Path, seed: int = 0) -> None:
    """A one-session NSD tree: a brain-shaped ellipsoid of noisy betas (0 outside, as NSD's
    betas are), an nsdgeneral ROI of ROI_VOXELS voxels inside it, a design and a stim info."""
    import pandas as pd

    from mindreader import nsd_write

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in VOLUME], indexing="ij"))
    radius = np.sqrt((grid**2).sum(axis=0))
    brain = radius < 0.9
    roi_score = np.where(brain, rng.random(VOLUME) + (grid[1] < 0), -np.inf)  # posterior-weighted
    threshold = np.sort(roi_score.ravel())[-ROI_VOXELS]
    mask = np.where(brain, 0, -1).astype(np.int16)
    mask[roi_score >= threshold] = 1

    betas = np.zeros((*VOLUME, TRIALS), np.int16)
    voxel_mean = rng.normal(0, 150, size=VOLUME)
    for t in range(TRIALS):
        volume = voxel_mean + rng.normal(0, 400, size=VOLUME)
        betas[..., t] = np.where(brain, np.clip(volume, -32768, 32767), 0).astype(np.int16)
    nsd_write.write_betas(root, "subj01", 1, betas)
    del betas
    nsd_write.write_mask(root, "subj01", mask)

    slots = np.repeat(np.arange(N_IMAGES), 3)
    masterordering = rng.permutation(slots)
    subjectim = np.arange(N_IMAGES)[None, :]
    nsd_write.write_expdesign(root, masterordering, subjectim, np.arange(N_SHARED))
    table = {"nsdId": np.arange(N_IMAGES), "cocoId": np.arange(N_IMAGES), "cocoSplit": ["train2017"] * N_IMAGES}
    table["shared1000"] = np.arange(N_IMAGES) < N_SHARED
    reps = np.stack([np.flatnonzero(masterordering == i) + 1 for i in range(N_IMAGES)])
    for k in range(3):
        table[f"subject1_rep{k}"] = reps[:, k]
    nsd_write.write_stim_info(root, pd.DataFrame(table))


def run_method(method: str, root: Path) -> dict:
    """Run one method in this process; return its time (work only) and peak RSS."""
    import nibabel as nib

    from mindreader.nsd import NSD, betas_relpath, mask_relpath
    from mindreader.nsd_betas import READ_BLOCK_BYTES
    from mindreader.prepare import PrepareOptions, prepare_subject

    betas_path, mask_path = root / betas_relpath(1, 1), root / mask_relpath(1)
    rss_after_imports = peak_rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    if method == "floor":
        decompressor, total = zlib.decompressobj(wbits=31), 0
        with open(betas_path, "rb") as handle:
            while block := handle.read(READ_BLOCK_BYTES):
                total += len(decompressor.decompress(block))
        shape = (total,)
    elif method in ("int16_whole", "naive_get_fdata"):
        keep = np.asarray(nib.load(mask_path).dataobj) > 0
        image = nib.load(betas_path)
        data = np.asarray(image.dataobj) if method == "int16_whole" else image.get_fdata()
        shape = data[keep].shape
    elif method == "project_stream":
        nsd = NSD(root)
        mask = nsd.mask(1)
        chunks = [chunk for _, chunk in nsd.iter_session_betas(1, 1, mask, "nifti", PrepareOptions(1).chunk_trials)]
        shape = (sum(len(c) for c in chunks), mask.n_voxels)
    else:
        with tempfile.TemporaryDirectory() as out:
            summary = prepare_subject(NSD(root), "subj01", PrepareOptions(sessions=1), Path(out) / "subj01.h5")
        shape = (summary["n_train"] + summary["n_test"], summary["n_voxels"])
    return {
        "method": method,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": rss_after_imports,
        "shape": list(shape),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process image. VmHWM, not getrusage's ru_maxrss: the latter
    survives exec, so a child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mindreader_bench_prepare")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all methods; each one's fastest counts")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # internal: one child run
    args = parser.parse_args()
    root = args.workdir / "nsd"
    if args.method:
        print(json.dumps(run_method(args.method, root)))
        return

    if not (root / ".complete").exists():
        print(f"writing a full-size session under {root} ...", flush=True)
        write_session_tree(root)
        (root / ".complete").touch()
    session_mb = np.prod(VOLUME) * TRIALS * 2 / 2**20
    runs: dict[str, list[dict]] = {method: [] for method in METHODS}
    # rounds of every method in turn, so that load from other processes hits all of them alike
    for round_ in range(args.repeats):
        for method in METHODS:
            child = subprocess.run(
                [sys.executable, __file__, "--workdir", str(args.workdir), "--method", method],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(child.stdout.strip().splitlines()[-1])
            runs[method].append(r)
            print(
                f"round {round_ + 1} {method:16s} {r['seconds']:7.2f} s wall {r['cpu_seconds']:7.2f} s CPU  "
                f"peak RSS {r['peak_rss_mb']:6.0f} MB  "
                f"(after imports {r['rss_after_imports_mb']:.0f} MB)  output {r['shape']}",
                flush=True,
            )
    results = {method: min(rs, key=lambda r: r["seconds"]) for method, rs in runs.items()}
    cpu = {method: min(r["cpu_seconds"] for r in rs) for method, rs in runs.items()}

    floor, floor_cpu = results["floor"]["seconds"], cpu["floor"]
    print(f"\nsession: {VOLUME} x {TRIALS} int16 = {session_mb:.0f} MB uncompressed; fastest of {args.repeats} rounds")
    print("CPU time is the steadier measure on a shared machine; single-threaded, so unloaded wall ~ CPU")
    print(f"{'method':16s} {'wall / floor':>12s} {'CPU / floor':>12s} {'peak RSS / session':>19s}")
    for method, r in results.items():
        print(
            f"{method:16s} {r['seconds'] / floor:12.2f} {cpu[method] / floor_cpu:12.2f} {r['peak_rss_mb'] / session_mb:19.3f}"
        )
    project = results["project_prepare"]
    print(
        f"\nproject_prepare: {project['seconds'] / floor:.2f}x the floor's wall time, "
        f"{cpu['project_prepare'] / floor_cpu:.2f}x its CPU time (target <= 1.2); "
        f"peak RSS {project['peak_rss_mb'] / session_mb:.3f}x the session (target < 0.25)"
    )


if __name__ == "__main__":
    main()
