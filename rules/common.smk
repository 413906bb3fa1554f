# Config validation, wildcard constraints built from the config, and target functions.
import os

from snakemake.utils import validate


validate(config, schema="../config/schema.yaml")

SUBJECTS = config["subjects"]
NSD_ROOT = config["nsd_root"]
SYNTHETIC = config["synthetic"]["enabled"]


wildcard_constraints:
    subject="|".join(SUBJECTS),


SYNTHETIC_MARKER = os.path.join(NSD_ROOT, ".synthetic_complete.json")


def nsd_inputs(*relpaths):
    """Input files of a rule that reads the NSD tree, given as paths relative to the NSD root.

    For a real tree these are the files themselves, so Snakemake names a missing one before any
    job starts; for a synthetic tree, the marker that the synthesize_nsd rule writes last.
    """
    if SYNTHETIC:
        return [SYNTHETIC_MARKER]
    return [os.path.join(NSD_ROOT, p) for p in relpaths]


def get_final_output():
    """Everything `rule all` builds: every table and figure, and each stage's products on the way.

    The target functions live with their stages (mappers.smk, generator.smk, evaluate.smk); they
    are called when `rule all` is defined, after every stage file has been included.
    """
    return [
        *expand("results/prepared/{subject}.h5", subject=SUBJECTS),
        "results/clip/captions_selected.tsv",
        *([f"{config['clip']['demo']['dir']}/metrics.json"] if config["clip"]["train_demo"] else []),
        *mapper_targets(),
        *generator_targets(),
        *evaluation_targets(),
    ]


# --- Runs: one reconstruction per (subject, mapper, loss, variant, strategy) -------------------

RUN_KEYS = ("subject", "mapper", "loss", "variant", "strategy")
AXES = {"variant": "variants", "strategy": "strategies", "loss": "losses", "mapper": "mappers"}


def evaluation_runs():
    """Every run the tables need, each a dict of RUN_KEYS, without duplicates, in a stable order.

    The main setting on every subject; on the ablation subjects, the main setting with one axis
    changed to each of its configured values; the mapper axis on every subject (comparison table).
    Ridge has no loss to choose: its runs use loss "mse", what its closed form minimises.
    """
    main = config["ablations"]["main"]
    runs = []
    for subject in SUBJECTS:
        runs.append({"subject": subject, **main})
        for axis, key in AXES.items():
            if axis != "mapper" and subject not in config["ablations"]["subjects"]:
                continue
            for value in config["ablations"][key]:
                runs.append({"subject": subject, **main, axis: value})
    unique = {}
    for run in runs:
        if run["mapper"] == "ridge":
            run["loss"] = "mse"
        unique[tuple(run[k] for k in RUN_KEYS)] = run
    return list(unique.values())
