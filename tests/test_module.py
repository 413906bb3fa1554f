"""The workflow deployed as a Snakemake module by another workflow (snakedeploy-style): the
importing workflow's folder is then the working directory and workflow.basedir, and neither is
this repository. A dry run of fig3 must plan the whole chain up to it, and the jobs must still
find the package through PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from conftest import REPO, tiny_config

IMPORTING_SNAKEFILE = f"""\
configfile: "config.yaml"


module mindreader:
    snakefile:
        {str(REPO / "Snakefile")!r}
    config:
        config


use rule * from mindreader


print("PYTHONPATH=" + os.environ["PYTHONPATH"])
"""


def test_deployed_as_a_module_it_plans_fig3(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config(), sort_keys=False))
    (tmp_path / "Snakefile").write_text(IMPORTING_SNAKEFILE)
    # No PYTHONPATH of ours: the one the jobs get is the workflow's.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    cmd = [sys.executable, "-m", "snakemake", "-n", "--workflow-profile", "none", "--cores", "2"]
    result = subprocess.run(
        [*cmd, "results/figures/fig3.pdf"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"dry run as a module:\n{output[-8000:]}"
    for rule in ("synthesize_nsd", "train_mapper", "pretrain_generator", "finetune_generator", "reconstruct", "fig3"):
        assert f"rule {rule}:" in output, f"{rule} not planned:\n{output[-8000:]}"
    exported = [line for line in output.splitlines() if line.startswith("PYTHONPATH=")]
    assert exported, output[-8000:]
    assert str(REPO) in exported[-1].removeprefix("PYTHONPATH=").split(os.pathsep), exported[-1]
