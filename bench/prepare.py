"""Benchmark: preparing one full-size NSD session (81 x 104 x 83 voxels x 750 trials, int16,
gzipped NIfTI, written here) - the project's preparation against (a) the naive approach
(nibabel get_fdata() of the whole session, then mask), (b) reading the int16 data whole, then
masking, and the floor: only decompressing the file.

Each method runs in its own subprocess, so its peak RSS (VmHWM) is its own; time is the work
only, after imports. With --sessions N > 1 the project's preparation also runs on a subject of N
sessions (copies of the session file; a design of N x 250 images) to show that its memory does
not grow with the number of sessions.
Usage: .venv/bin/python bench/prepare.py [--workdir DIR] [--repeats N] [--sessions N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from mindreader.scale.memory import peak_rss_mb

VOLUME = (81, 104, 83)  # subj01's functional volume at 1.8 mm
TRIALS = 750  # one NSD session
ROI_VOXELS = 15724  # subj01's nsdgeneral count
IMAGES_PER_SESSION = 250  # 3 repeats each fill one session
SHARED_PER_SESSION = 25  # a tenth of the images, as NSD's shared 1,000 of ~10,000
METHODS = ("floor", "int16_whole", "naive_get_fdata", "project_stream", "project_prepare")


def write_session_tree(root: Path, seed: int = 0) -> None:
    """A one-session NSD tree: a brain-shaped ellipsoid of noisy betas (0 outside, as NSD's
    betas are), an nsdgeneral ROI of ROI_VOXELS voxels inside it, a design and a stim info."""
    from mindreader.nsd import write as nsd_write

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
    write_design(root, sessions=1, rng=rng)


def write_design(root: Path, sessions: int, rng: np.random.Generator) -> None:
    """Design and stim info of one subject seeing IMAGES_PER_SESSION images per session, 3 times each."""
    import pandas as pd

    from mindreader.nsd import write as nsd_write

    n_images, n_shared = IMAGES_PER_SESSION * sessions, SHARED_PER_SESSION * sessions
    masterordering = rng.permutation(np.repeat(np.arange(n_images), 3))
    nsd_write.write_expdesign(root, masterordering, np.arange(n_images)[None, :], np.arange(n_shared))
    table = {"nsdId": np.arange(n_images), "cocoId": np.arange(n_images), "cocoSplit": ["train2017"] * n_images}
    table["shared1000"] = np.arange(n_images) < n_shared
    order = np.argsort(masterordering, kind="stable").reshape(n_images, 3)  # the 3 trials of each image
    for k in range(3):
        table[f"subject1_rep{k}"] = order[:, k] + 1
    nsd_write.write_stim_info(root, pd.DataFrame(table))


def write_multi_session_tree(root: Path, session_root: Path, sessions: int) -> None:
    """A subject of ``sessions`` copies of the benchmark's session file, with its own design."""
    from mindreader.nsd import betas_relpath, mask_relpath

    for relpath in [mask_relpath(1)] + [betas_relpath(1, s) for s in range(1, sessions + 1)]:
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        source = session_root / (betas_relpath(1, 1) if "betas" in relpath else relpath)
        shutil.copyfile(source, root / relpath)
    write_design(root, sessions, np.random.default_rng(1))


def run_method(method: str, root: Path, sessions: int = 1) -> dict:
    """Run one method in this process; return its time (work only) and peak RSS."""
    import nibabel as nib

    from mindreader.nsd import NSD, betas_relpath, mask_relpath
    from mindreader.nsd.betas import READ_BLOCK_BYTES
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
            summary = prepare_subject(NSD(root), "subj01", PrepareOptions(sessions), Path(out) / "subj01.h5")
        shape = (summary["n_train"] + summary["n_test"], summary["n_voxels"])
    return {
        "method": method,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": rss_after_imports,
        "shape": list(shape),
        "sessions": sessions,
    }


def run_child(workdir: Path, method: str, root: Path, sessions: int = 1) -> dict:
    """One method in a fresh interpreter, so that its peak memory is its own."""
    command = [sys.executable, __file__, "--workdir", str(workdir), "--method", method]
    command += ["--root", str(root), "--sessions", str(sessions)]
    child = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def describe(label: str, r: dict) -> str:
    return (
        f"{label} {r['method']:16s} {r['seconds']:7.2f} s wall {r['cpu_seconds']:7.2f} s CPU  "
        f"peak RSS {r['peak_rss_mb']:6.0f} MB  (after imports {r['rss_after_imports_mb']:.0f} MB)  output {r['shape']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "mindreader_bench_prepare")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of all methods; each one's fastest counts")
    parser.add_argument("--sessions", type=int, default=4, help="sessions of the multi-session run (1: skip it)")
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # internal: one child run
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)  # internal: the child's NSD tree
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_method(args.method, args.root, args.sessions)))
        return

    root = args.workdir / "nsd"
    if not (root / ".complete").exists():
        print(f"writing a full-size session under {root} ...", flush=True)
        write_session_tree(root)
        (root / ".complete").touch()
    session_mb = np.prod(VOLUME) * TRIALS * 2 / 2**20
    runs: dict[str, list[dict]] = {method: [] for method in METHODS}
    # rounds of every method in turn, so that load from other processes hits all of them alike
    for round_ in range(args.repeats):
        for method in METHODS:
            runs[method].append(run_child(args.workdir, method, root))
            print(describe(f"round {round_ + 1}", runs[method][-1]), flush=True)
    results = {method: min(rs, key=lambda r: r["seconds"]) for method, rs in runs.items()}
    cpu = {method: min(r["cpu_seconds"] for r in rs) for method, rs in runs.items()}

    floor, floor_cpu = results["floor"]["seconds"], cpu["floor"]
    print(f"\nsession: {VOLUME} x {TRIALS} int16 = {session_mb:.0f} MB uncompressed; fastest of {args.repeats} rounds")
    print("CPU time is the steadier measure on a shared machine; single-threaded, so unloaded wall ~ CPU")
    print(f"{'method':16s} {'wall / floor':>12s} {'CPU / floor':>12s} {'peak RSS / session':>19s}")
    for method, r in results.items():
        ratios = f"{r['seconds'] / floor:12.2f} {cpu[method] / floor_cpu:12.2f} {r['peak_rss_mb'] / session_mb:19.3f}"
        print(f"{method:16s} {ratios}")
    project = results["project_prepare"]
    print(
        f"\nproject_prepare: {project['seconds'] / floor:.2f}x the floor's wall time, "
        f"{cpu['project_prepare'] / floor_cpu:.2f}x its CPU time (target <= 1.2); "
        f"peak RSS {project['peak_rss_mb'] / session_mb:.3f}x the session (target < 0.25)"
    )

    if args.sessions > 1:
        multi_root = args.workdir / f"nsd_{args.sessions}_sessions"
        if not (multi_root / ".complete").exists():
            write_multi_session_tree(multi_root, root, args.sessions)
            (multi_root / ".complete").touch()
        multi = run_child(args.workdir, "project_prepare", multi_root, args.sessions)
        print("\n" + describe(f"{args.sessions} sessions", multi))
        print(
            f"{args.sessions} sessions: {multi['cpu_seconds'] / args.sessions:.2f} s CPU per session; "
            f"peak RSS {multi['peak_rss_mb']:.0f} MB ({multi['peak_rss_mb'] - project['peak_rss_mb']:+.0f} MB "
            "against one session, which includes the larger test set's averaged sums)"
        )


if __name__ == "__main__":
    main()
