# Config validation, wildcard constraints built from the config, and every helper function of
# the stage files (grouped by stage below): the stage files hold rules only. This file is
# included first; a function that uses another stage's helper is called only when a rule is
# defined, after the helpers above it exist.
import hashlib
import json
import math
import os
import re

import yaml
from snakemake.utils import validate

from mindreader.names import (
    EXTERNAL_PREFIX,
    GENERATOR_RUN_FILES,
    ORACLE_SUFFIX,
    RUN_KEYS,
    TABLE_NAMES,
    VARIANTS,
    check_view_draw,
    run_key,
    stage_generator_config,
)
from mindreader.nsd.paths import (
    CAPTION_SPLITS,
    EXPDESIGN_RELPATH,
    STIM_INFO_RELPATH,
    betas_relpath,
    captions_relpath,
    mask_relpath,
    present_betas_format,
)
from mindreader.demo_weights import (
    CHECKED_KEYS as DEMO_WEIGHTS_CHECKED_KEYS,
    CLIP_FILES as DEMO_CLIP_FILES,
    MANIFEST,
    RELEASE_FILES,
    use_release,
)
from mindreader.weights import sha256_of

validate(config, schema="../config/schema.yaml")

# A release of the demo CLIP and pre-trained generator (config demo_weights), or None (the run
# trains both). With one, clip.demo.dir and generator.init now name its folders, and the jobs
# that read them wait for the check of the release against the run (DEMO_WEIGHTS_CHECK).
DEMO_WEIGHTS = use_release(config, WORKFLOW_DIR)
DEMO_WEIGHTS_CHECK = "results/demo_weights/check.json"
# Where rule export_demo_weights writes a release (`make demo-weights` installs it in the repository).
DEMO_WEIGHTS_EXPORT = "results/demo_weights/release"

# Config keys that say where and how fast a job runs, not what it computes (by name anywhere, or
# by path): config_param leaves them out, so changing them reruns nothing.
RUN_ONLY_KEYS = {"threads", "gpus", "mem_mb", "runtime"}
RUN_ONLY_PATHS = {
    "prepare.chunk_trials",
    "clip.batch_size",
    "generator.log_steps",
    "generator.reconstruct.batch",
    "evaluation.batch_size",
}


# How the CLIP targets are made, not which CLIP: read by the embedding rules only. The other
# rules load the CLIP model alone.
CLIP_TARGET_KEYS = [
    "clip.screening",
    "clip.augment",
    "clip.n_aug",
    "clip.clamp",
    "clip.normalize",
]


def config_param(*paths, without=()):
    """The config values at `paths` (dotted: "clip.demo"), less the paths in `without` and the
    run-only keys above, as one canonical JSON string: a rule's `config` param. Snakemake reruns
    a job whose params changed, so a change to what a rule's script reads reruns the rule (and,
    by time stamps, everything after it). Sections upstream of a rule's inputs may be included
    freely: a change to them reruns the rule anyway."""
    skipped = RUN_ONLY_PATHS | set(without)

    def kept(value, path):
        if not isinstance(value, dict):
            return value
        return {
            key: kept(item, f"{path}.{key}")
            for key, item in value.items()
            if key not in RUN_ONLY_KEYS and f"{path}.{key}" not in skipped
        }

    picked = {}
    for path in paths:
        value = config
        for key in path.split("."):
            value = value[key]
        picked[path] = kept(value, path)
    return json.dumps(picked, sort_keys=True)


SUBJECTS = config["subjects"]
NSD_ROOT = config["nsd_root"]
SYNTHETIC = config["synthetic"]["enabled"]


# The values each run axis may take (the schema's enums of ablations.main), and the two CLIP
# targets of a mapper. Rules narrow these where two of them share a path (strategy).
# (relative to this file: workflow.basedir is the importing workflow's when used as a module)
SCHEMA = yaml.safe_load(open(workflow.source_path("../config/schema.yaml")))
ALLOWED = {
    axis: spec["enum"]
    for axis, spec in SCHEMA["properties"]["ablations"]["properties"]["main"][
        "properties"
    ].items()
}
MAPPER_TARGETS = ("img", "cap")


def alternatives(values):
    return "|".join(re.escape(v) for v in values)


wildcard_constraints:
    subject="|".join(SUBJECTS),
    mapper=alternatives(ALLOWED["mapper"]),
    loss=alternatives(ALLOWED["loss"]),
    target=alternatives(MAPPER_TARGETS),
    variant=alternatives(ALLOWED["variant"]),
    strategy=alternatives(ALLOWED["strategy"]),


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
    """Everything the default target builds (every table and figure, and each stage's products
    on the way). The per-stage target functions are below; the Snakefile calls this one when it
    defines its default target, after every stage file has been included.
    """
    return [
        *expand("results/prepared/{subject}.h5", subject=SUBJECTS),
        "results/clip/captions_selected.tsv",
        *(
            [f"{config['clip']['demo']['dir']}/metrics.json"]
            if config["clip"]["train_demo"] and not DEMO_WEIGHTS
            else []
        ),
        *mapper_targets(),
        *generator_targets(),
        *evaluation_targets(),
    ]


# --- Runs: one reconstruction per (subject, mapper, loss, variant, strategy) -------------------

AXES = {
    "variant": "variants",
    "strategy": "strategies",
    "loss": "losses",
    "mapper": "mappers",
}


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


# --- Cluster time limits -----------------------------------------------------------------------

# A partition refuses, at submission, a job that asks for more time than its limit.
MAX_RUNTIME = config["cluster"]["max_runtime"]


def per_attempt(value):
    """A resource that grows with the attempt: `value` on the first, `value` x attempt on each
    retry (time limits then capped by cap_runtimes())."""
    return lambda wildcards, attempt: value * attempt


def training_retries(minutes):
    """Retries of a training job projected to take `minutes`: one per further MAX_RUNTIME chunk it
    needs (the job stopped at its time limit checkpoints on SIGTERM, the retry resumes). The run's
    own retries for failures (--retries, the profile's) come on top once they are known, at the
    start of the run (mindreader.checkpoint.add_failure_retries, in the Snakefile's onstart).

    Only the scheduling process retries: inside a cluster job (Snakemake's remote mode) a rule's
    own retries would rerun a crashed training in the same allocation, on the same node, before
    the scheduler hears of it. There the job fails, and the retry is a new job that resumes.
    """
    if workflow.remote_exec:
        return 0
    return math.ceil(minutes / MAX_RUNTIME) - 1


def capped_runtime(asked):
    """A runtime resource: what `asked` (a snakemake Resource) gives, at most MAX_RUNTIME."""

    def evaluate(wildcards, **aux):
        minutes = asked.evaluate(wildcards, **aux).value
        # a value still to be determined (TBD: it depends on input not there yet) stays so
        return min(minutes, MAX_RUNTIME) if isinstance(minutes, int) else minutes

    return evaluate


def cap_runtimes(rules):
    """Cap every rule's time limit at MAX_RUNTIME on every attempt, whoever set it (the rule, the
    profile's default-resources or set-resources, --set-resources: all in rule.resources once the
    rule is defined). The Snakefile calls this after the last rule."""
    for each in rules:
        if "runtime" in each.resources:
            each.resources["runtime"] = capped_runtime(each.resources["runtime"])


# --- Data (rules/data.smk) ---------------------------------------------------------------------


def prepare_inputs(wildcards):
    """The NSD files prepare_subject reads for a subject: the design, the stim info, the mask and
    the betas of each configured session in the configured format ("auto": whichever is there,
    NIfTI first, as the script decides)."""
    fmt = config["prepare"]["betas_format"]
    betas = []
    for session in range(1, config["prepare"]["sessions"] + 1):
        if fmt == "auto":
            # none present: name the NIfTI, so that Snakemake reports the missing file
            chosen = (
                present_betas_format(NSD_ROOT, wildcards.subject, session) or "nifti"
            )
        else:
            chosen = fmt
        betas.append(betas_relpath(wildcards.subject, session, chosen))
    return nsd_inputs(
        EXPDESIGN_RELPATH, STIM_INFO_RELPATH, mask_relpath(wildcards.subject), *betas
    )


# --- CLIP space (rules/clip.smk) ---------------------------------------------------------------

CLIP = config["clip"]
CLIP_DEMO_DIR = CLIP["demo"]["dir"]
CAPTION_RELPATHS = [captions_relpath(split) for split in CAPTION_SPLITS]


def clip_model_files():
    """The files that a CLIP-loading rule takes as input (the demo CLIP's, or the weights file); a
    released demo CLIP only once its release is checked."""
    if CLIP["train_demo"]:
        return [
            f"{CLIP_DEMO_DIR}/open_clip_config.json",
            f"{CLIP_DEMO_DIR}/open_clip_model.safetensors",
            *([DEMO_WEIGHTS_CHECK] if DEMO_WEIGHTS else []),
        ]
    return [CLIP["weights"]]


def configured_weights(cfg):
    """Every weights file the config names: each section with `weights_name` and `weights`
    keys (a section that trains its own network instead, `train_demo: true`, names none).
    """
    found = []
    if isinstance(cfg, dict):
        if cfg.get("weights_name") and cfg.get("weights") and not cfg.get("train_demo"):
            found.append(
                {
                    "name": cfg["weights_name"],
                    "path": cfg["weights"],
                    "sha256": cfg.get("sha256", ""),
                }
            )
        for value in cfg.values():
            found.extend(configured_weights(value))
    return found


def missing_weights_message(cfg):
    """None, or which configured weights files are absent and how to fetch them (nothing
    downloads while the workflow runs, so say it before a rule fails for want of one).
    """
    missing = [w for w in configured_weights(cfg) if not os.path.isfile(w["path"])]
    if not missing:
        return None
    listed = ", ".join("%s (%s)" % (w["name"], w["path"]) for w in missing)
    return (
        "Pretrained weights named in the config are not present: %s. Fetch them with "
        "'snakemake --cores 1 fetch_weights' (same --configfile) on a machine with internet."
        % listed
    )


# --- Mappers (rules/mappers.smk) ---------------------------------------------------------------

MAPPER_CFG = config["mappers"]
# view_draw fresh needs clip.n_aug >= mappers.train.epochs: fail now, not after the embedding job.
check_view_draw(MAPPER_CFG["train"], config["clip"]["n_aug"])
MAPPER_DIR = "results/mappers/{subject}/{mapper}/{loss}/{target}"
CLIP_TARGET_FILES = {"img": "results/clip/images.h5", "cap": "results/clip/captions.h5"}


def mapper_targets():
    """metrics.json of every mapper folder the runs of evaluation_runs() need (targets img and cap)."""
    folders = {
        MAPPER_DIR.format(
            subject=run["subject"],
            mapper=run["mapper"],
            loss=run["loss"],
            target=target,
        )
        for run in evaluation_runs()
        for target in CLIP_TARGET_FILES
    }
    return sorted(f"{folder}/metrics.json" for folder in folders)


# --- Generator (rules/generator.smk) -----------------------------------------------------------

GEN = config["generator"]
# pre-training's settings: generator.pretrain may set its own batch, GPUs, ...
PRETRAIN_GEN = stage_generator_config(GEN, "pretrain")
NETWORK_FILES = list(GENERATOR_RUN_FILES)
PRETRAINED = "results/generator/pretrained"
IMPORTED = "results/generator/imported"
# What store.load_networks reads from a generator folder.
GENERATOR_FOLDER_FILES = [
    "network.json",
    "G.safetensors",
    "G_ema.safetensors",
    "D.safetensors",
]


def init_kind(init):
    """generator.init: 'pretrain' (rule pretrain_generator), 'lafite' (a Lafite training pickle,
    imported by rule import_lafite) or 'folder' (a generator folder, used as it is)."""
    if init == "pretrain":
        return "pretrain"
    if os.path.isdir(init):
        missing = [
            f
            for f in GENERATOR_FOLDER_FILES
            if not os.path.isfile(os.path.join(init, f))
        ]
        if missing:
            raise ValueError(
                f"generator.init '{init}': a generator folder lacks {', '.join(missing)}"
            )
        return "folder"
    if os.path.isfile(init):
        return "lafite"
    raise ValueError(
        f"generator.init '{init}': no such file or folder; expected 'pretrain', a Lafite "
        "training pickle or a generator folder (network.json, G/G_ema/D.safetensors)"
    )


INIT_KIND = init_kind(GEN["init"])
# The folder fine-tuning starts from.
INIT_FOLDER = {"pretrain": PRETRAINED, "lafite": IMPORTED}.get(
    INIT_KIND, os.path.normpath(GEN["init"])
)


def init_description():
    """Which initialisation the fine-tuned runs start from, for the tables and provenance:
    'pretrain', or the pickle or folder with its sha256 (a folder's: of its files' digests).
    """
    if INIT_KIND == "pretrain":
        return "pretrain"
    if INIT_KIND == "lafite":
        return f"Lafite pickle {GEN['init']} (sha256 {sha256_of(GEN['init'])})"
    digests = "".join(
        sha256_of(os.path.join(INIT_FOLDER, f)) for f in GENERATOR_FOLDER_FILES
    )
    return f"generator folder {GEN['init']} (sha256 {hashlib.sha256(digests.encode()).hexdigest()})"


GENERATOR_INIT = init_description()


def init_files():
    """The generator folder fine-tuning starts from, as input; a release's once it is checked."""
    return [
        *expand(f"{INIT_FOLDER}/{{name}}", name=GENERATOR_FOLDER_FILES),
        *([DEMO_WEIGHTS_CHECK] if DEMO_WEIGHTS else []),
    ]


RUN = "results/generator/{subject}/{mapper}/{loss}/{variant}/{strategy}"


def generator_clip_files():
    """CLIP is loaded for the itc term only."""
    return clip_model_files() if GEN["itc"] > 0 else []


def mapper_folders(w):
    return [
        f"results/mappers/{w.subject}/{w.mapper}/{w.loss}/{t}"
        for t in VARIANTS[w.variant].targets
    ]


def run_predictions(w):
    """Test conditions of a run: the frozen mappers' pred_test.h5, or the end-to-end run's own."""
    if w.strategy == "e2e":
        return [os.path.join(RUN.format(**dict(w.items())), "e2e_pred_test.h5")]
    return [f"{folder}/pred_test.h5" for folder in mapper_folders(w)]


def embedding_files(w):
    """CLIP targets of each condition of the variant (end-to-end mapper loss)."""
    files = {"img": "results/clip/images.h5", "cap": "results/clip/captions.h5"}
    return [files[t] for t in VARIANTS[w.variant].targets]


def generator_targets():
    """Every reconstruction the tables need (evaluation_runs() above), and its oracle's when
    evaluation.oracle is on."""
    suffixes = ["", ORACLE_SUFFIX] if config["evaluation"]["oracle"] else [""]
    return [
        "results/reconstructions/{subject}/{mapper}/{loss}/{variant}/{strategy}{suffix}.h5".format(
            suffix=suffix, **run
        )
        for run in evaluation_runs()
        for suffix in suffixes
    ]


def oracle_targets(w):
    """Condition -> the CLIP targets file whose true embeddings condition a run's oracle (the
    variant's conditions: images.h5 for img, captions.h5 for cap)."""
    return {t: CLIP_TARGET_FILES[t] for t in VARIANTS[w.variant].targets}


# --- Evaluation and tables (rules/evaluate.smk) ------------------------------------------------

EVAL = config["evaluation"]
# What the battery's jobs (evaluate_run, score_external, comparison_metrics) read of the config:
# not the figures' image count, nor the external entries (each job names its own).
BATTERY_CONFIG = config_param(
    "evaluation",
    "clip",
    "seed",
    without=["evaluation.figure_images", "evaluation.external", *CLIP_TARGET_KEYS],
)
RUN_WILDCARDS = "{subject}/{mapper}/{loss}/{variant}/{strategy}"
# Every run the tables use also reconstructed from the test images' true CLIP embeddings.
ORACLE = EVAL["oracle"]


def with_oracle(outputs_for):
    """A rule's named outputs: outputs_for("") (the run's), then, when evaluation.oracle is on,
    outputs_for(ORACLE_SUFFIX) (its oracle's) with each name prefixed oracle_."""
    outputs = dict(outputs_for(""))
    if ORACLE:
        outputs.update(
            {f"oracle_{k}": v for k, v in outputs_for(ORACLE_SUFFIX).items()}
        )
    return outputs


def run_path(prefix, suffix, run):
    return f"{prefix}/{RUN_WILDCARDS}{suffix}".format(**run)


def metrics_files(suffix=""):
    """Each run's metrics JSON; suffix ORACLE_SUFFIX: its oracle's."""
    return [
        run_path("results/metrics", f"{suffix}.json", run) for run in evaluation_runs()
    ]


def evaluation_predictions(w):
    """Predicted test embeddings per mapper target of the run of wildcards ``w``."""
    return run_prediction_files(dict(w.items()))


def run_prediction_files(run):
    """Predicted test embeddings per mapper target: the frozen mappers' pred_test.h5, or the
    end-to-end run's own (one file holding every condition it trained)."""
    if run["strategy"] == "e2e":
        folder = run_path("results/generator", "", run)
        return {"e2e": os.path.join(folder, "e2e_pred_test.h5")}
    return {
        t: os.path.join(MAPPER_DIR.format(**run, target=t), "pred_test.h5")
        for t in ("img", "cap")
    }


def evaluation_clip_files():
    """The CLIP of the CLIP metrics is an input only when it is the workflow's own (the demo CLIP
    is made by a rule); another CLIP, like the networks, may be absent (metrics missing).
    """
    return clip_model_files() if EVAL["clip"] is None else []


def generated_fid_files(w, suffix=""):
    """The run's generated-sample FID (made by fid_generated), or with suffix ORACLE_SUFFIX its
    oracle's (made by fid_generated_oracle), when evaluation.fid_protocols asks for it and the FID
    network's weights file is there; without it evaluate_run reports the metric missing, and
    weights_present reruns the evaluation once the file appears."""
    if "generated" not in EVAL["fid_protocols"]:
        return []
    if not os.path.isfile(EVAL["networks"]["inception_fid"]["weights"]):
        return []
    return [
        run_path("results/metrics", f"{suffix}.fid_generated.json", dict(w.items()))
    ]


def weights_present():
    files = {name: entry["weights"] for name, entry in EVAL["networks"].items()}
    if EVAL["clip"] is not None:
        files["clip"] = EVAL["clip"]["weights"]
    return {name: os.path.isfile(path) for name, path in sorted(files.items())}


def data_description():
    """Which data the numbers come from; every table prints it."""
    prepare = config["prepare"]
    return {
        "synthetic": bool(SYNTHETIC),
        "nsd_root": NSD_ROOT,
        "sessions": prepare["sessions"],
        "split": prepare["split"],
        "test_repeats": prepare["test_repeats"],
        "generator_init": GENERATOR_INIT,
    }


def evaluation_targets():
    """Every table and figure (for the default target); the per-run metrics come with them. The
    information table only on the synthetic NSD: planted truth (scenes.json) exists only there.
    """
    names = [*TABLE_NAMES, *(["scene_recovery"] if SYNTHETIC else [])]
    tables = expand("results/tables/{name}.{ext}", name=names, ext=("csv", "md", "tex"))
    return tables + figure_targets()


def scene_recovery_runs():
    """Runs of the information table: the main setting per subject and mapper (the comparison
    table's runs) and the conditioning variants on the ablation subjects."""
    runs = [
        main_run(subject, mapper=mapper)
        for subject in SUBJECTS
        for mapper in dict.fromkeys([MAIN["mapper"], *config["ablations"]["mappers"]])
    ]
    runs += [
        main_run(subject, variant=variant)
        for subject in config["ablations"]["subjects"]
        if subject in SUBJECTS
        for variant in config["ablations"]["variants"]
    ]
    return list({tuple(run[k] for k in RUN_KEYS): run for run in runs}.values())


def scene_recovery_inputs():
    """What the information table reads (mindreader.evaluation.information.information_frame):
    per subject its prepared file; the CLIP targets; each run's mappers' predicted test
    embeddings; each run's brain-driven and (evaluation.oracle) oracle reconstructions.
    """
    runs = scene_recovery_runs()
    mappers = {(r["subject"], r["mapper"], r["loss"]) for r in runs}
    # in the order of the stages: the oracle, then the brain
    sources = [("oracle", ORACLE_SUFFIX), ("brain", "")] if ORACLE else [("brain", "")]
    return {
        "prepared": {s: f"results/prepared/{s}.h5" for s in SUBJECTS},
        "clip_files": CLIP_TARGET_FILES,
        "predictions": [
            {
                "subject": subject,
                "mapper": mapper,
                "target": target,
                "path": f"{MAPPER_DIR.format(subject=subject, mapper=mapper, loss=loss, target=target)}/pred_test.h5",
            }
            for subject, mapper, loss in sorted(mappers)
            for target in MAPPER_TARGETS
        ],
        "reconstructions": [
            {
                **{k: run[k] for k in ("subject", "mapper", "variant")},
                "source": source,
                "path": run_path("results/reconstructions", f"{suffix}.h5", run),
            }
            for run in runs
            for source, suffix in sources
        ],
    }


# --- Figures and the report (rules/report.smk) -------------------------------------------------

MAIN = config["ablations"]["main"]
FIGURE_SUBJECT = next(
    (s for s in config["ablations"]["subjects"] if s in SUBJECTS), SUBJECTS[0]
)


def main_run(subject, **changes):
    run = {"subject": subject, **MAIN, **changes}
    if run["mapper"] == "ridge":
        run["loss"] = "mse"
    return run


def reconstruction_file(run):
    return run_path("results/reconstructions", ".h5", run)


def fig3_rows():
    """(label, reconstructions file) per conditioning variant of the ablation subject, after the
    main variant's oracle (evaluation.oracle): its reconstructions from the true embeddings.
    """
    oracle = [
        (
            f"oracle ({MAIN['variant']}, true embeddings)",
            run_path(
                "results/reconstructions",
                f"{ORACLE_SUFFIX}.h5",
                main_run(FIGURE_SUBJECT),
            ),
        )
    ]
    return (oracle if ORACLE else []) + [
        (v, reconstruction_file(main_run(FIGURE_SUBJECT, variant=v)))
        for v in config["ablations"]["variants"]
    ]


def subject_grid_rows(subject):
    """(label, reconstructions file) per mapper of the comparison table."""
    return [
        (m, reconstruction_file(main_run(subject, mapper=m)))
        for m in config["ablations"]["mappers"]
    ]


def figure_targets():
    per_subject = expand(
        "results/figures/{subject}/{figure}.{ext}",
        subject=SUBJECTS,
        figure=("reconstructions", "training_curves", "retrieval"),
        ext=("pdf", "png"),
    )
    scene_recovery = ["scene_recovery"] if SYNTHETIC else []
    return [
        "results/figures/fig3.pdf",
        "results/figures/fig3.png",
        *per_subject,
    ] + expand(
        "results/figures/{name}.{ext}",
        name=["metrics_conditioning", *scene_recovery],
        ext=("pdf", "png"),
    )


# --- Other methods' rows (evaluation.external) -----------------------------------------------

EXTERNAL = EVAL["external"]
EXTERNAL_DIR = "results/metrics/external/{name}"
COMPARISON_METRICS = "results/metrics/comparison.json"


def external_files(name):
    """Another method's reconstructions (file or folder), and its nsd id sidecar if any."""
    entry = EXTERNAL[name]
    return [entry["path"], *([entry["ids"]] if entry.get("ids") else [])]


def comparison_rows():
    """The measured rows that comparison_metrics scores on the test images every row has, the
    comparison table's runs (each mapper's main setting on every subject) and the metric
    bars' (the figure subject's conditioning variants), brain then (evaluation.oracle) oracle;
    each with its metrics, per-image CSV, reconstructions and (brain) predicted embeddings.
    """
    runs = [
        main_run(s, mapper=m) for s in SUBJECTS for m in config["ablations"]["mappers"]
    ]
    runs += [
        main_run(FIGURE_SUBJECT, variant=v) for v in config["ablations"]["variants"]
    ]
    sources = [("brain", "")] + ([("oracle", ORACLE_SUFFIX)] if ORACLE else [])
    rows = {}
    for run in runs:
        for source, suffix in sources:
            rows[run_key(run, source)] = {
                "key": run_key(run, source),
                "metrics": run_path("results/metrics", f"{suffix}.json", run),
                "per_image": run_path(
                    "results/metrics", f"{suffix}.per_image.csv", run
                ),
                "reconstructions": run_path(
                    "results/reconstructions", f"{suffix}.h5", run
                ),
                "predictions": run_prediction_files(run) if source == "brain" else None,
            }
    return list(rows.values())


COMPARISON_ROWS = comparison_rows()


def comparison_metrics_files():
    """The comparison table's and metric bars' rows on common images: only with external rows."""
    return [COMPARISON_METRICS] if EXTERNAL else []


def figure_png(path, caption, subcategory):
    return report(path, caption=caption, category="5. Figures", subcategory=subcategory)


# --- Preflight (rules/preflight.smk) -----------------------------------------------------------

PREFLIGHT = config["preflight"]


def planned_job(rule_name, wildcards, threads, gpus, mem_mb, runtime, training=False):
    """A job as the preflight prices it. Its threads, what it asks on its first attempt (the
    runtime capped at MAX_RUNTIME, as cap_runtimes caps it), and how many jobs are planned for
    it (a training projected to run longer than MAX_RUNTIME runs as one job per chunk).
    """
    first = min(runtime, MAX_RUNTIME)
    return {
        "rule": rule_name,
        "wildcards": wildcards,
        "threads": threads,
        "resources": {"gpu": gpus, "mem_mb": mem_mb, "runtime": first},
        "attempts": math.ceil(runtime / MAX_RUNTIME) if training else 1,
    }


def preflight_jobs():
    """Every heavy job the default target plans (the target functions above), each with the asks
    its rule makes from the same config keys; the light ones (the synthetic NSD, data
    preparation, the demo CLIP, tables, figures) are left out."""
    clip = [CLIP["threads"], CLIP["gpus"], CLIP["mem_mb"], CLIP["runtime"]]
    jobs = [planned_job(name, {}, *clip) for name in ("embed_images", "embed_captions")]
    mapper = MAPPER_CFG
    for path in mapper_targets():
        w = dict(zip(("subject", "mapper", "loss", "target"), path.split("/")[2:6]))
        gpus = 0 if w["mapper"] == "ridge" else mapper["gpus"]
        asks = [mapper["threads"], gpus, mapper["mem_mb"], mapper["runtime"]]
        jobs.append(planned_job("train_mapper", w, *asks, training=True))
    runs = evaluation_runs()
    generator = [GEN["threads"], GEN["gpus"]]
    if INIT_KIND == "pretrain" and any(run["strategy"] != "scratch" for run in runs):
        pretrain = [
            GEN["threads"],
            PRETRAIN_GEN["gpus"],
            GEN["pretrain"]["mem_mb"],
            GEN["pretrain"]["runtime"],
        ]
        jobs.append(planned_job("pretrain_generator", {}, *pretrain, training=True))
    finetune = [*generator, GEN["finetune"]["mem_mb"], GEN["finetune"]["runtime"]]
    rec = GEN["reconstruct"]
    evaluation = [EVAL["threads"], EVAL["gpus"], EVAL["mem_mb"], EVAL["runtime"]]
    for run in runs:
        trains = "finetune_e2e" if run["strategy"] == "e2e" else "finetune_generator"
        jobs.append(planned_job(trains, run, *finetune, training=True))
        reconstruct = [GEN["threads"], rec["gpus"], rec["mem_mb"], rec["runtime"]]
        jobs.append(planned_job("reconstruct", run, *reconstruct))
        jobs.append(planned_job("evaluate_run", run, *evaluation))
        if generated_fid_files(run):
            jobs.append(planned_job("fid_generated", run, *evaluation))
        if ORACLE and generated_fid_files(run, ORACLE_SUFFIX):
            jobs.append(planned_job("fid_generated_oracle", run, *evaluation))
    for name in sorted(EXTERNAL):
        jobs.append(planned_job("score_external", {"name": name}, *evaluation))
    if EXTERNAL:
        # priced as if every row were scored again on the common images (the most it does)
        job = planned_job("comparison_metrics", {}, *evaluation)
        job["scored_sets"] = len(COMPARISON_ROWS) + len(EXTERNAL)
        jobs.append(job)
    return jobs


# Built once: the rule's params, its GPU ask (1 when any job it measures for asks for one, else
# 0) and its threads (the most any of them asks for) all read it.
PREFLIGHT_JOBS = preflight_jobs()
PREFLIGHT_GPUS = int(any(job["resources"]["gpu"] > 0 for job in PREFLIGHT_JOBS))
PREFLIGHT_THREADS = max(job["threads"] for job in PREFLIGHT_JOBS)
