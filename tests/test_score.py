"""python -m mindreader.score: other methods' reconstructions, in each accepted format, scored by
our battery. On a tiny synthetic NSD, with stand-in feature networks (pooled pixels, no weights):
our own reconstructions written in every format must score exactly what evaluate_run gives them,
and every malformed input is refused before any network runs, writing nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from scipy.io import loadmat

from conftest import TINY_OVERRIDES, tiny_config
from mindreader import metrics, score
from mindreader.evaluation.run import battery_config, evaluate_reconstructions, evaluate_run
from mindreader.nsd import EXPDESIGN_RELPATH, NSD
from mindreader.synth import SyntheticSpec, write_synthetic_nsd

torch.set_num_threads(1)
SUBJECT = "subj01"
EVALUATION = {"bootstrap": 20, "bootstrap_fd": 10, "batch_size": 8, "image_side": 24, "threads": 1}
UNAVAILABLE = {"fid": "stand-in: no weights"}


def stand_in_features(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every network feature of the battery as a view of pooled pixels (small: Frechet distances
    of 12 images stay cheap)."""
    coarse, fine = F.adaptive_avg_pool2d(x, 2).flatten(1), F.adaptive_avg_pool2d(x, 4).flatten(1)
    views = (coarse, fine, fine.square(), 1 - fine, fine[:, ::2], fine[:, 1::2])
    return dict(zip(("clip", "alex2", "alex5", "incep", "eff", "swav"), views))


def stand_in_sources(*args):
    return {"pixels": stand_in_features}, dict(UNAVAILABLE), {"pixels": "stand-in"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic NSD (3 sessions, 12 shared images), its config, and our 'reconstructions'
    of subj01's shared images (16 px, noisy) as a reconstructions h5 in ascending nsd id."""
    root = tmp_path_factory.mktemp("score")
    config = tiny_config(nsd_root=str(root / "nsd"), evaluation=EVALUATION)
    write_synthetic_nsd(root / "nsd", SyntheticSpec.from_config(config["synthetic"]), [SUBJECT])
    configfile = root / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    nsd = NSD(root / "nsd")
    ids = np.sort(nsd.shared_images(SUBJECT))
    gt = nsd.read_images(ids)
    rng = np.random.default_rng(0)
    rec = np.clip(gt[:, ::2, ::2].astype(int) + rng.integers(-60, 60, (len(ids), 16, 16, 3)), 0, 255).astype(np.uint8)
    h5 = root / "ours.h5"
    with h5py.File(h5, "w") as f:
        f["images"], f["nsd_id"] = rec, ids
    return SimpleNamespace(root=root, configfile=configfile, nsd=nsd, ids=ids, gt=gt, rec=rec, h5=h5)


def reference(world, rec: np.ndarray) -> dict:
    """What the workflow's evaluate_run gives ``rec`` (rows in world.ids), with the stand-ins."""
    path = world.root / f"reference-{rec.sum()}.h5"
    with h5py.File(path, "w") as f:
        f["images"], f["nsd_id"] = rec, world.ids
    cfg = battery_config(score.load_config(world.configfile)["evaluation"], 42)
    sources, unavailable, _ = stand_in_sources()
    summary, per_image = evaluate_run(
        path, world.gt, {}, sources, unavailable, cfg, torch.device("cpu"), {"missing": "-"}
    )
    return summary["metrics"], per_image


def run_score(world, monkeypatch, out, *args) -> int:
    monkeypatch.setattr(score, "load_sources", stand_in_sources)
    return score.main(["--configfile", str(world.configfile), "--subject", SUBJECT, "--out", str(out), *args])


def as_float_nchw(rec: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rec).permute(0, 3, 1, 2).float() / 255


def write_format(world, fmt: str, folder: Path, rec: np.ndarray | None = None) -> list[str]:
    """Our reconstructions written as ``fmt`` under ``folder``; the score arguments that read them.
    The id-keyed formats get their rows in a shuffled order."""
    rec = world.rec if rec is None else rec
    folder.mkdir(parents=True)
    perm = np.random.default_rng(1).permutation(len(world.ids))
    if fmt == "h5":
        return ["--images", str(world.h5), "--format", "h5"]
    if fmt in ("tensor-pt", "tensor-npy"):
        path = folder / ("recons.pt" if fmt == "tensor-pt" else "recons.npy")
        if fmt == "tensor-pt":
            torch.save(as_float_nchw(rec[perm]), path)
            (folder / "ids.txt").write_text("".join(f"{i}\n" for i in world.ids[perm]))
            ids = folder / "ids.txt"
        else:
            np.save(path, rec[perm])
            np.save(folder / "ids.npy", world.ids[perm])
            ids = folder / "ids.npy"
        return ["--images", str(path), "--format", "tensor", "--ids", str(ids)]
    if fmt == "png":
        for i, image in zip(world.ids, rec):
            Image.fromarray(image).save(folder / f"{i}.png")
        return ["--images", str(folder), "--format", "png"]
    if fmt == "mindeye2":
        torch.save(as_float_nchw(rec), folder / "subj01_all_recons.pt")  # ascending ids: world.ids
        return ["--images", str(folder / "subj01_all_recons.pt"), "--format", "mindeye2"]
    assert fmt == "brain-diffuser"
    row = {nsd_id: k for k, nsd_id in enumerate(world.ids)}
    for i, nsd_id in enumerate(world.nsd.shared_images(SUBJECT, 3)):  # first appearance, 3 sessions
        Image.fromarray(rec[row[nsd_id]]).save(folder / f"{i}.png")
    return ["--images", str(folder), "--format", "brain-diffuser", "--sessions", "3"]


def read_out(out: Path) -> tuple[dict, "pd.DataFrame"]:
    import pandas as pd

    return json.loads((out / "metrics.json").read_text()), pd.read_csv(out / "per_image.csv")


@pytest.mark.parametrize("fmt", ["h5", "tensor-pt", "tensor-npy", "png", "mindeye2", "brain-diffuser"])
def test_our_reconstructions_score_the_same_in_every_format(world, monkeypatch, tmp_path, fmt):
    args = write_format(world, fmt, tmp_path / "in")
    assert run_score(world, monkeypatch, tmp_path / "out", *args) == 0
    summary, per_image = read_out(tmp_path / "out")
    expected, expected_per_image = reference(world, world.rec)
    valued = [key for key, result in expected.items() if "value" in result]
    assert {"pixcorr", "ssim", "alex2", "clip", "fd_clip", "eff"} <= set(valued)
    for key in valued:
        assert summary["metrics"][key]["value"] == pytest.approx(expected[key]["value"], abs=1e-6), key
        assert summary["metrics"][key]["ci95"] == pytest.approx(expected[key]["ci95"], abs=1e-6), key
    for key in ("img_ret", "brain_ret", "cap_ret", "cap_brain_ret"):
        assert summary["metrics"][key] == {"missing": score.EXTERNAL_RETRIEVAL}
    assert summary["metrics"]["fid_paired"] == {"missing": UNAVAILABLE["fid"]}
    assert "missing" in summary["metrics"]["fid_generated"]
    assert list(per_image["nsd_id"]) == list(world.ids)
    assert np.allclose(per_image["pixcorr"], expected_per_image["pixcorr"], atol=1e-5)
    assert summary["n_images"] == len(world.ids) and summary["reconstruction"]["below_425_px"] is True
    assert summary["reconstruction"]["size"] == [16, 16]
    assert summary["external"]["format"] == ("tensor" if fmt.startswith("tensor") else fmt)
    assert len(summary["external"]["sha256"]) == 64
    assert "24 px" in summary["resize_policy"]["pixels"]


def test_a_shuffled_order_with_the_ids_unchanged_scores_differently(world, monkeypatch, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    torch.save(as_float_nchw(world.rec[::-1].copy()), folder / "recons.pt")
    np.save(folder / "ids.npy", world.ids)
    args = ["--images", str(folder / "recons.pt"), "--format", "tensor", "--ids", str(folder / "ids.npy")]
    assert run_score(world, monkeypatch, tmp_path / "out", *args) == 0
    summary, _ = read_out(tmp_path / "out")
    expected, _ = reference(world, world.rec)
    for key in ("pixcorr", "ssim", "alex2"):
        assert summary["metrics"][key]["value"] < expected[key]["value"] - 0.05, key


def test_several_samples_score_sample_0_and_report_the_mean_over_samples(world, monkeypatch, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    other = world.rec[:, ::-1].copy()  # a second sample: each image mirrored
    for i, first, second in zip(world.ids, world.rec, other):
        Image.fromarray(first).save(folder / f"{i}_0.png")
        Image.fromarray(second).save(folder / f"{i}_1.png")
    args = ["--images", str(folder), "--format", "png", "--selection", "none: every sample"]
    assert run_score(world, monkeypatch, tmp_path / "out", *args) == 0
    summary, per_image = read_out(tmp_path / "out")
    first, first_per_image = reference(world, world.rec)
    _, second_per_image = reference(world, other)
    assert summary["metrics"]["pixcorr"]["value"] == pytest.approx(first["pixcorr"]["value"], abs=1e-6)
    means = summary["samples"]["mean_over_samples"]
    assert summary["samples"]["n"] == 2 and summary["external"]["selection"] == "none: every sample"
    expected = (first_per_image["ssim"] + second_per_image["ssim"]) / 2
    assert means["ssim"]["value"] == pytest.approx(expected.mean(), abs=1e-6)
    assert np.allclose(per_image["ssim_mean_over_samples"], expected, atol=1e-5)
    assert len(means["fd_clip"]["per_sample"]) == 2


class Payload:
    """Unpickling this would call `_executed` (what a malicious .pt does with os.system)."""

    def __reduce__(self):
        return (_executed, ())


EXECUTED = []


def _executed():
    EXECUTED.append(True)
    return "ran"


def malformed(world, case: str, folder: Path) -> tuple[list[str], Path]:
    """(score arguments, the file the refusal must name) of a malformed input."""
    folder.mkdir(parents=True)
    pt, ids_file = folder / "recons.pt", folder / "ids.txt"
    images, ids = as_float_nchw(world.rec), list(world.ids)
    named = pt
    if case == "missing id":
        ids = ids[:-1]
    elif case == "duplicate id":
        ids[1] = ids[0]
        named = ids_file
    elif case == "id outside the shared set":
        ids[0] = int(np.setdiff1d(np.arange(world.nsd.n_images), world.nsd.shared_images(SUBJECT))[0])
        named = ids_file
    elif case == "wrong shape":
        images = images[:, :2]
    elif case == "values out of range":
        images = images * 1.5
    if case == "pickled object":
        torch.save({"images": images, "payload": Payload()}, pt)
    else:
        torch.save(images, pt)
    ids_file.write_text("".join(f"{i}\n" for i in ids))
    args = ["--images", str(pt), "--format", "tensor", "--ids", str(ids_file)]
    if case == "mindeye2 missing image":
        torch.save(images[1:], pt)
        args = ["--images", str(pt), "--format", "mindeye2"]
    elif case in ("brain-diffuser missing image", "unreadable png"):
        args = write_format(world, "brain-diffuser", folder / "bd")
        named = folder / "bd" / "3.png"
        if case == "unreadable png":
            named.write_bytes(b"not a png")
        else:
            named.unlink()
            named = folder / "bd"
    elif case in ("png missing sample", "png mixed names"):
        args = write_format(world, "png", folder / "png")
        named = folder / "png"
        for i in world.ids if case == "png missing sample" else world.ids[:1]:
            (named / f"{i}.png").rename(named / f"{i}_0.png")
        if case == "png missing sample":  # every id has samples 0 and 1 but the first, only 0
            for i in world.ids[1:]:
                (named / f"{i}_1.png").write_bytes((named / f"{i}_0.png").read_bytes())
    return args, named


# case -> what the refusal must say was expected
MALFORMED = {
    "missing id": "expected one id per image",
    "duplicate id": "expected unique ids",
    "id outside the shared set": "not in the subject's shared test set",
    "wrong shape": "expected (N, 3, H, W) float in [0, 1] or (N, H, W, 3) uint8",
    "values out of range": "expected (N, 3, H, W) float in [0, 1]",
    "pickled object": "weights_only=True",
    "mindeye2 missing image": "expected 12 (the subject's shared test images",
    "brain-diffuser missing image": "no 3.png (expected 0.png .. 11.png",
    "unreadable png": "cannot read as an image",
    "png missing sample": "expected samples 0..1 of every nsd id",
    "png mixed names": "expected one scheme",
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_input_is_refused_naming_the_file_and_nothing_is_written(world, monkeypatch, tmp_path, capsys, case):
    args, named = malformed(world, case, tmp_path / "in")
    loaded = []
    monkeypatch.setattr(score, "load_sources", lambda *a: loaded.append(True) or stand_in_sources())
    out = tmp_path / "out"
    code = score.main(["--configfile", str(world.configfile), "--subject", SUBJECT, "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 1 and str(named) in err and MALFORMED[case] in err, err
    assert not loaded, "the networks were loaded before the input was checked"
    assert not out.exists()
    assert not EXECUTED


def test_brain_diffuser_order_follows_the_sessions(world):
    # Brain-Diffuser's loop over the design (prepare_nsddata.py): each shared image at its first trial
    mat = loadmat(world.root / "nsd" / EXPDESIGN_RELPATH, squeeze_me=True)
    first = {}
    for trial in range(3 * TINY_OVERRIDES["synthetic"]["trials_per_session"]):
        nsd_id = int(mat["subjectim"][0, mat["masterordering"][trial] - 1]) - 1
        if nsd_id + 1 in mat["sharedix"]:
            first.setdefault(nsd_id, trial)
    assert list(world.nsd.shared_images(SUBJECT, 3)) == list(first)
    # 9 of the 12 shared images appear in session 1; the default 37 sessions are more than the tiny
    # design holds, and the error says so
    assert len(world.nsd.shared_images(SUBJECT, 1)) == 9
    assert list(world.nsd.shared_images(SUBJECT, 3)) != sorted(world.nsd.shared_images(SUBJECT, 3))
    with pytest.raises(ValueError, match="37 sessions"):
        score.read_external(world.root, "brain-diffuser", world.nsd, SUBJECT)


def test_the_command_line_scores_with_the_configs_networks_and_says_what_is_missing(world, tmp_path):
    # No weights in this working directory: every network metric is missing with its reason; the
    # pixel metrics are there. Relative paths resolve from the working directory.
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "recons.npy", world.rec)
    np.save(tmp_path / "in" / "ids.npy", world.ids)
    cmd = [
        sys.executable,
        "-m",
        "mindreader.score",
        "--configfile",
        str(world.configfile),
        "--subject",
        SUBJECT,
        "--images",
        "in/recons.npy",
        "--ids",
        "in/ids.npy",
        "--format",
        "tensor",
        "--name",
        "ours",
        "--out",
        "out",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    summary, per_image = read_out(tmp_path / "out")
    assert summary["name"] == "ours" and summary["source"] == "external"
    assert "value" in summary["metrics"]["pixcorr"] and "value" in summary["metrics"]["ssim"]
    for key in ("alex2", "incep", "eff", "swav", "fid_paired", "clip"):
        assert "missing" in summary["metrics"][key], key
    assert summary["external"]["path"] == str(tmp_path / "in" / "recons.npy")
    assert list(per_image["nsd_id"]) == list(world.ids)
    assert (tmp_path / "out" / "metrics.provenance.json").is_file()


def test_the_command_line_can_resize_the_pixel_metrics_images_as_mindeye_does(world, monkeypatch, tmp_path):
    # --pixel-resize-via 12: both images to 12 px, then to the config's 24 (MindEye's 256 then 425,
    # at this world's size); recorded in metrics.json. Caught: the option not reaching the battery.
    args = write_format(world, "h5", tmp_path / "in")
    assert run_score(world, monkeypatch, tmp_path / "out", *args, "--pixel-resize-via", "12") == 0
    summary, per_image = read_out(tmp_path / "out")
    for key, per_image_metric in (("pixcorr", metrics.pixcorr_per_image), ("ssim", metrics.ssim_per_image)):
        assert np.allclose(per_image[key], per_image_metric(world.gt, world.rec, 24, via=(12,)), atol=1e-5), key
        assert not np.allclose(per_image[key], per_image_metric(world.gt, world.rec, 24), atol=1e-3), key
    assert summary["pixel_resize_via"] == [12] and "12 px then 24 px" in summary["resize_policy"]["pixels"]


def test_rows_of_other_images_are_scored_again_on_the_common_ones_and_only_they(world):
    # Two rows of our reconstructions: all 12 images, and the first 8 (its metrics from the same
    # battery). The common images are the 8; the 12-image row is scored again on them and equals
    # the 8-image row; with rows of the same images nothing is scored (no network is loaded).
    # Caught: a row of other images kept as it is; networks loaded when nothing is scored again.
    from mindreader.evaluation.common_images import Row, common_nsd_ids, score_on_common_images

    cfg = battery_config(score.load_config(world.configfile)["evaluation"], 42)
    device = torch.device("cpu")
    loads = []

    def sources():
        loads.append(1)
        return stand_in_sources()[:2]

    def row(key, keep):
        ids, rec = world.ids[keep], world.rec[keep]
        summary, _ = evaluate_reconstructions(
            rec, ids, world.nsd.read_images(ids), {}, *stand_in_sources()[:2], cfg, device, {"missing": "-"}, "brain",
            {"resolution": 16},
        )
        by_id = dict(zip(world.ids.tolist(), world.rec))
        return Row(key, ids, summary, lambda wanted: np.stack([by_id[i] for i in wanted.tolist()]), lambda wanted: {})

    every, first = row("every", slice(None)), row("first", slice(0, 8))
    common = score_on_common_images([every, first], world.nsd, sources, cfg, device)
    assert common["nsd_id"] == world.ids[:8].tolist() and loads == [1]
    scored = {r["key"]: r for r in common["rows"]}
    assert scored["every"]["rescored"] and not scored["first"]["rescored"] and scored["every"]["n_own"] == 12
    for key in ("pixcorr", "ssim", "alex2", "clip", "fd_clip"):
        again, own = scored["every"]["summary"]["metrics"][key], first.summary["metrics"][key]
        assert again["value"] == pytest.approx(own["value"], abs=1e-6) and again["ci95"] == pytest.approx(own["ci95"], abs=1e-6)
    assert score_on_common_images([first, first], world.nsd, sources, cfg, device)["n_images"] == 8 and loads == [1]
    with pytest.raises(ValueError, match="no test image is common"):
        common_nsd_ids([row("a", slice(0, 4)), row("b", slice(4, 8))])
