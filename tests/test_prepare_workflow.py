"""The prepare_subject rule through Snakemake: two subjects of the synthetic NSD, a real-layout
tree that the test writes (inputs named file by file), and each bad input: a non-zero exit, the
file named, no output left."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
from conftest import run_snakemake, tiny_config
from test_nsd_tree import SESSIONS, write_tiny_tree
from test_prepare import EXPECTED_MESSAGE, damaged_tree

from mindreader.nsd import NSD
from mindreader.prepare import PrepareOptions, prepare_subject

pytestmark = pytest.mark.workflow


def real_tree_config(root) -> dict:
    return tiny_config(nsd_root=str(root), synthetic={"enabled": False}, prepare={"sessions": SESSIONS})


def test_rule_on_a_real_layout_tree_equals_the_library(tmp_path):
    root = tmp_path / "nsd"
    write_tiny_tree(root, formats=("hdf5",))
    run_snakemake(tmp_path / "run", ["results/prepared/subj02.h5"], real_tree_config(root))
    direct = tmp_path / "direct.h5"
    prepare_subject(NSD(root), "subj02", PrepareOptions(sessions=SESSIONS, betas_format="hdf5"), direct)
    with h5py.File(tmp_path / "run/results/prepared/subj02.h5") as rule_file, h5py.File(direct) as library_file:
        for name in ("train/betas", "test/betas", "train/nsd_id", "test/trial", "voxel_xyz"):
            np.testing.assert_array_equal(rule_file[name][()], library_file[name][()])


def run_on_damaged_tree(tmp_path, damages: dict[int, str], n_subjects: int):
    """Run prepare for every damaged subject (--keep-going: each job fails on its own)."""
    root = damaged_tree(tmp_path, damages, n_subjects)
    subjects = [f"subj{number:02d}" for number in damages]
    config = real_tree_config(root)
    config["subjects"] = subjects
    workdir = tmp_path / "run"
    targets = [f"results/prepared/{subject}.h5" for subject in subjects]
    result = run_snakemake(workdir, targets, config, "--keep-going", check=False)
    prepared = workdir / "results/prepared"
    assert not prepared.exists() or not list(prepared.iterdir())
    return result, workdir


def test_bad_inputs_of_single_subjects_fail_their_jobs_naming_the_file(tmp_path):
    # one Snakemake run covers four cases, one subject each
    damages = {1: "truncated betas", 2: "unreadable betas", 3: "mask of another shape", 4: "subject not in the design"}
    result, workdir = run_on_damaged_tree(tmp_path, damages, n_subjects=4)
    assert result.returncode != 0
    for number, case in damages.items():
        subject = f"subj{number:02d}"
        log = (workdir / f"results/logs/prepare_subject/{subject}.log").read_text()
        assert re.search(r"NSD(Missing|Format)Error: .*" + EXPECTED_MESSAGE[case].format(subject=subject), log), log


@pytest.mark.parametrize("case", ["design without subjectim", "missing session"])
def test_bad_inputs_of_the_whole_tree_fail_the_rule_naming_the_file(tmp_path, case):
    result, workdir = run_on_damaged_tree(tmp_path, {1: case}, n_subjects=2)
    assert result.returncode != 0
    said = result.stdout + result.stderr
    if case == "missing session":  # Snakemake itself names the missing input before any job runs
        assert (
            "MissingInputException" in said
            and "subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session03.nii.gz" in said
        )
    else:
        log = (workdir / "results/logs/prepare_subject/subj01.log").read_text()
        assert re.search(r"NSDFormatError: .*" + EXPECTED_MESSAGE[case], log), log
