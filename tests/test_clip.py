"""CLIP space: loading from local files, missing weights, targets, screening, embeddings, demo CLIP."""

from __future__ import annotations

import colorsys
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO

from mindreader import weights
from mindreader.clip import caption_scores, clip_targets, load_clip, preprocess_images, select_captions
from mindreader.clip import demo
from mindreader.clip.embed import TargetAugmentation, cutout, embed_image_batches, write_image_embeddings
from mindreader.clip.models import create_frozen_clip
from mindreader.clip.screening import screen_captions, write_caption_embeddings

torch.set_num_threads(1)

TINY = {
    "dir": "unused",
    "embed_dim": 16,
    "image_size": 32,
    "vision_layers": [1, 1, 1, 1],
    "vision_width": 8,
    "context_length": 16,
    "text_width": 32,
    "text_layers": 1,
    "text_heads": 2,
    "steps": 3,
    "batch_size": 8,
    "lr": 1e-3,
    "weight_decay": 0.1,
}


@pytest.fixture(scope="module")
def saved_clip(tmp_path_factory):
    """A tiny random demo CLIP saved as an open_clip folder, plus the in-memory original."""
    folder = tmp_path_factory.mktemp("clip") / "demo"
    torch.manual_seed(0)
    model, tokenizer = demo.build_demo_clip(TINY)
    model.eval()
    demo.save_demo_clip(model, TINY, folder)
    return {"model": model, "tokenizer": tokenizer, "folder": folder, "cfg": {"train_demo": True, "demo": {**TINY, "dir": str(folder)}}}


def test_demo_clip_round_trips_through_load_clip(saved_clip):
    clip = load_clip(saved_clip["cfg"])
    x = torch.rand(3, 3, 32, 32)
    texts = ["a red square", "two blue circles", "a green triangle"]
    with torch.no_grad():
        expected_img, expected_txt = demo.encode_pair(saved_clip["model"], x, saved_clip["tokenizer"](texts))
        got_img = torch.nn.functional.normalize(clip.encode_images(x), dim=-1)
        got_txt = torch.nn.functional.normalize(clip.encode_texts(texts), dim=-1)
    torch.testing.assert_close(got_img, expected_img)
    torch.testing.assert_close(got_txt, expected_txt)
    assert clip.embed_dim == 16 and clip.image_size == 32


def test_weights_files_of_every_supported_kind_load_the_same(saved_clip, tmp_path):
    model = saved_clip["model"]
    name = f"local-dir:{saved_clip['folder']}"
    torch.save(model.state_dict(), tmp_path / "state.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing and TorchScript deprecation warnings
        traced = torch.jit.trace(model, (torch.rand(2, 3, 32, 32), saved_clip["tokenizer"](["a", "b"])), strict=False)
        torch.jit.save(traced, str(tmp_path / "torchscript.pt"))  # the format of OpenAI's released files
    x = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        reference = create_frozen_clip(name, saved_clip["folder"] / "open_clip_model.safetensors").encode_images(x)
        for path in (tmp_path / "state.pt", tmp_path / "torchscript.pt"):
            torch.testing.assert_close(create_frozen_clip(name, path).encode_images(x), reference)


def test_pretrained_path_checks_sha256_and_names_the_fetch_command(saved_clip, tmp_path):
    weights_file = saved_clip["folder"] / "open_clip_model.safetensors"
    digest = weights.sha256_of(weights_file)
    cfg = {"train_demo": False, "model": f"local-dir:{saved_clip['folder']}", "weights_name": "", "weights": str(weights_file)}
    assert load_clip({**cfg, "sha256": digest[:12]}).embed_dim == 16
    with pytest.raises(ValueError, match="does not match"):
        load_clip({**cfg, "sha256": "0" * 64})

    missing = tmp_path / "ViT-B-32.pt"
    paper = {"train_demo": False, "model": "ViT-B-32-quickgelu", "weights_name": "clip-vit-b-32-openai", "weights": str(missing), "sha256": ""}
    with pytest.raises(weights.MissingWeightsError) as err:
        load_clip(paper)
    message = str(err.value)
    assert str(missing) in message and "clip-vit-b-32-openai" in message and "snakemake --cores 1 fetch_weights" in message
    assert f"fetch('clip-vit-b-32-openai', '{missing}')" in message


def test_registry_entries_pin_openai_checksums_from_their_urls():
    for name in ("clip-vit-b-32-openai", "clip-vit-l-14-openai"):
        spec = weights.get_spec(name)
        assert len(spec.sha256) == 64 and spec.url.split("/")[-2] == spec.sha256
        assert spec.preprocess["image_size"] == 224


def test_unknown_model_and_missing_demo_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip model 'ViT-Q-99'.*ViT-B-32"):
        create_frozen_clip("ViT-Q-99", tmp_path / "w.safetensors")
    with pytest.raises(weights.MissingWeightsError, match="demo CLIP file not found.*snakemake"):
        load_clip({"train_demo": True, "demo": {"dir": str(tmp_path / "nowhere")}})


def test_frozen_clip_stays_frozen_but_passes_gradients_to_its_input(saved_clip):
    clip = load_clip(saved_clip["cfg"])
    wrapper = torch.nn.Sequential(torch.nn.Identity(), clip)
    wrapper.train()
    assert not clip.model.training and not any(p.requires_grad for p in clip.parameters())
    x = torch.rand(2, 3, 24, 36, requires_grad=True)
    clip.encode_images(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clip.encode_images(torch.rand(3, 32, 32))


def test_preprocess_resizes_short_side_centre_crops_and_normalises():
    x = torch.zeros(1, 3, 20, 40)
    x[..., 4:36] = 1.0  # a bright band wider than the centre square
    out = preprocess_images(x, 10, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="shortest")
    assert out.shape == (1, 3, 10, 10)
    torch.testing.assert_close(out, torch.ones_like(out))  # the centre crop is all band: (1 - 0.5) / 0.5
    squashed = preprocess_images(x, 10, mean=(0, 0, 0), std=(1, 1, 1), resize_mode="squash")
    assert squashed[0, 0, 5, 0] < 0.1 and squashed[0, 0, 5, 5] > 0.9


def test_targets_clamp_then_normalise_and_each_step_switches_off():
    raw = np.array([[3.0, 0.0, -4.0, 1.0]])
    torch.testing.assert_close(torch.from_numpy(clip_targets(raw, clamp=1.5, normalize=False)), torch.tensor([[1.5, 0.0, -1.5, 1.0]]))
    expected = np.array([[1.5, 0.0, -1.5, 1.0]]) / np.sqrt(1.5**2 * 2 + 1)
    np.testing.assert_allclose(clip_targets(raw), expected, rtol=1e-6)
    np.testing.assert_allclose(clip_targets(raw, clamp=0, normalize=True), raw / np.sqrt(26), rtol=1e-6)
    with pytest.raises(ValueError, match="clamp"):
        clip_targets(raw, clamp=-1)


def test_screening_rules_pick_the_known_captions():
    rng = np.random.default_rng(0)
    scores = np.array([0.1, 0.9, 0.3, 0.9, 0.5])
    assert select_captions(scores, "best", 3, rng).tolist() == [1]  # tie: the first in COCO's order
    assert select_captions(scores, "topk_mean", 3, rng).tolist() == [1, 3, 4]
    draws = {int(select_captions(scores, "random_topk", 2, rng)[0]) for _ in range(50)}
    assert draws == {1, 3}
    with pytest.raises(ValueError, match="one of"):
        select_captions(scores, "worst", 3, rng)

    image = np.array([1.0, 0.0, 0.0])
    captions = np.array([[0.0, 1.0, 0.0], [2.0, 0.1, 0.0], [-1.0, 0.0, 0.0]])
    s = caption_scores(image, captions)
    assert int(np.argmax(s)) == 1 and s[2] == pytest.approx(-1.0)


def test_screen_captions_keeps_all_scores_and_selects_the_best(saved_clip, tmp_path):
    clip = load_clip(saved_clip["cfg"])
    ids = np.array([3, 7, 11])
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    emb = embed_image_batches(clip, [(ids[:2], images[:2]), (ids[2:], images[2:])], 3)
    captions = {3: ["a red square", "a blue circle"], 7: ["one", "two", "three"], 11: ["only\tone\ncaption"]}
    screened = screen_captions(clip, ids, emb["raw"], captions, "best", 2, batch_size=2, seed=0)
    for row, nsd_id in enumerate(ids):
        own = screened["all_nsd_id"] == nsd_id
        best = screened["all_caption"][own][np.argmax(screened["all_score"][own])]
        assert screened["caption"][row] == best
    write_caption_embeddings(tmp_path / "captions.h5", tmp_path / "sel.tsv", screened, clip, "best", 2, 1.5, True)
    with h5py.File(tmp_path / "captions.h5") as f:
        assert f["all/caption"].shape == (6,) and f["target"].shape == (3, 16)
        np.testing.assert_allclose(np.linalg.norm(f["target"][()], axis=1), 1.0, rtol=1e-5)
        assert f["caption"][2].decode() == "only\tone\ncaption"
    table = pd.read_csv(tmp_path / "sel.tsv", sep="\t")
    assert table["n_captions"].tolist() == [2, 3, 1] and table["caption"][2] == "only one caption"
    with pytest.raises(ValueError, match="no captions"):
        screen_captions(clip, ids, emb["raw"], {3: ["x"], 7: []}, "best", 2, 2, 0)


def test_image_embeddings_with_augmented_views(saved_clip, tmp_path):
    clip = load_clip(saved_clip["cfg"])
    ids = np.array([0, 5, 9, 12])
    images = np.random.default_rng(2).integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
    torch.manual_seed(0)
    augmentation = augmenter(size=24, blur_kernel=5)
    batches = [(ids[:3], images[:3]), (ids[3:], images[3:])]
    emb = embed_image_batches(clip, batches, 4, n_aug=2, augmentation=augmentation)
    assert emb["raw"].shape == (4, 16) and emb["aug_raw"].shape == (4, 2, 16)
    assert not np.allclose(emb["aug_raw"][:, 0], emb["raw"])
    with torch.no_grad():
        single = clip.encode_images(torch.from_numpy(images[1:2]).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(emb["raw"][1:2], single, rtol=1e-4, atol=1e-5)  # batching changes nothing
    write_image_embeddings(tmp_path / "images.h5", emb, clip, 1.5, True)
    with h5py.File(tmp_path / "images.h5") as f:
        assert f["nsd_id"][()].tolist() == ids.tolist() and f["aug_target"].shape == (4, 2, 16)
        assert dict(f.attrs)["n_aug"] == 2 and dict(f.attrs)["embed_dim"] == 16
    with pytest.raises(ValueError, match="ascending"):
        write_image_embeddings(tmp_path / "bad.h5", {**emb, "nsd_id": ids[::-1].copy()}, clip, 1.5, True)
    assert not (tmp_path / "bad.h5").exists()


def test_augmented_views_go_through_clip_a_batch_at_a_time_as_if_all_at_once(saved_clip, monkeypatch):
    """K views of a batch of B images are embedded B at a time (a forward holds clip.batch_size
    images whatever K: 256 x 40 at once was ~41 GB at the paper's sizes), drawn in the order they
    had when all B * K went through at once: the same views, the same embeddings."""
    clip = load_clip(saved_clip["cfg"])
    images = np.random.default_rng(3).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    augmentation = augmenter(size=24, blur_kernel=5)
    torch.manual_seed(0)
    with torch.no_grad():
        resized = augmentation.resize(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
        at_once = clip.encode_images(torch.stack([augmentation(image) for image in resized for _ in range(4)]))
    forward_sizes = []
    encode = clip.encode_images
    monkeypatch.setattr(clip, "encode_images", lambda x: forward_sizes.append(len(x)) or encode(x))
    torch.manual_seed(0)
    emb = embed_image_batches(clip, [(np.arange(3), images)], 3, n_aug=4, augmentation=augmentation)
    assert forward_sizes == [3, 3, 3, 3, 3]  # the plain images, then 12 views 3 at a time
    np.testing.assert_allclose(emb["aug_raw"], at_once.numpy().reshape(3, 4, -1), rtol=1e-4, atol=1e-5)


# --- target augmentation ------------------------------------------------------------------------

# The original's get_img_trans as fmri_clip.py calls it, written out from its code.
ORIGINAL_AUGMENT = {
    "size": 256, "p": 1.0, "crop_scale": [0.8, 1.0], "flip_p": 0.5, "color_jitter_p": 0.4,
    "color_jitter": [0.4, 0.4, 0.2, 0.1], "grayscale_p": 0.2, "blur_p": 0.5, "blur_kernel": 23,
    "blur_sigma": [0.1, 2.0], "cutout": 0.3,
}
# Every random step switched off: a view is the resized image itself.
NOTHING = {
    "crop_scale": [1.0, 1.0], "flip_p": 0.0, "color_jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "cutout": 0.0,
}


def augmenter(**overrides) -> TargetAugmentation:
    return TargetAugmentation(**{**ORIGINAL_AUGMENT, **overrides})


def views(augmentation, image, n, seed=0):
    torch.manual_seed(seed)
    return torch.stack([augmentation(image) for _ in range(n)])


def test_paper_and_schema_augmentation_is_the_originals():
    paper = yaml.safe_load((REPO / "config" / "nsd.yaml").read_text())["clip"]["augment"]
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    defaults = {k: v["default"] for k, v in schema["properties"]["clip"]["properties"]["augment"]["properties"].items()}
    assert paper == defaults == ORIGINAL_AUGMENT


def test_augmentation_switched_off_returns_the_resized_image():
    image = torch.rand(3, 16, 16)
    assert torch.equal(views(augmenter(size=16, **NOTHING), image, 5), image.expand(5, 3, 16, 16))
    assert torch.equal(views(augmenter(size=16, blur_kernel=5, p=0.0), image, 5), image.expand(5, 3, 16, 16))
    batch = augmenter(size=16).resize(torch.rand(2, 3, 40, 30))
    assert batch.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="resized to 16 x 16"):
        augmenter(size=16)(torch.rand(3, 20, 16))


def test_flip_mirrors_the_crop():
    """Same seed, flip forced on or off: the views are mirror images (the flip follows the crop)."""
    image = torch.rand(3, 32, 32)
    keep = {**NOTHING, "crop_scale": [0.8, 1.0]}
    flipped = views(augmenter(size=32, **{**keep, "flip_p": 1.0}), image, 10)
    plain = views(augmenter(size=32, **keep), image, 10)
    assert torch.equal(flipped, plain.flip(-1))
    assert not torch.equal(plain[0], image)  # the crop did something


def test_grayscale_is_the_luma_of_the_image():
    image = torch.rand(3, 16, 16)
    luma = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    gray = views(augmenter(size=16, **{**NOTHING, "grayscale_p": 1.0}), image, 1)[0]
    for channel in gray:
        torch.testing.assert_close(channel, luma, atol=2e-3, rtol=0)


def test_random_resized_crop_box_stays_in_the_originals_range():
    """On an image whose channels are its row and column coordinates, the view's corners give the
    crop box back: area 0.8-1.0 of the image, aspect 3/4-4/3."""
    side = 64
    ramp = torch.linspace(0, 1, side)
    image = torch.stack([ramp[:, None].expand(side, side), ramp[None, :].expand(side, side), torch.zeros(side, side)])
    out = views(augmenter(size=side, **{**NOTHING, "crop_scale": [0.8, 1.0]}), image, 300)
    # Bilinear (align_corners False) samples the crop's pixel centres: output rows 0 and side - 1
    # read input rows h (side - 1) / side apart, and the ramp rises 1 / (side - 1) per row.
    height = (out[:, 0, -1, 0] - out[:, 0, 0, 0]) * side
    width = (out[:, 1, 0, -1] - out[:, 1, 0, 0]) * side
    area, aspect = height * width / side**2, width / height
    assert area.min() > 0.8 - 0.05 and area.max() < 1.0 + 0.01
    assert aspect.min() > 3 / 4 - 0.05 and aspect.max() < 4 / 3 + 0.05
    assert area.min() < 0.84 and area.max() > 0.96  # the range is used, not one size


def test_cutout_zeroes_the_originals_square():
    """Rows round((r -/+ 0.15) H), clipped to [0, H - 1) (the original never zeroes the last row or
    column); columns alike. Two boxes written out by hand."""
    ones = torch.ones(3, 20, 20)
    inside = torch.ones(3, 20, 20)
    inside[:, 5:11, 11:17] = 0  # centre (0.4, 0.7): rows 0.25 * 20 .. 0.55 * 20, columns 0.55 * 20 .. 0.85 * 20
    assert torch.equal(cutout(ones, (0.4, 0.7), 0.3), inside)
    corner = torch.ones(3, 20, 20)
    corner[:, 16:19, 0:3] = 0  # centre (0.95, 0.02): rows 16 .. 22 clipped to 19, columns -3 .. 3 clipped to 0
    assert torch.equal(cutout(ones, (0.95, 0.02), 0.3), corner)


def test_cutout_comes_last_and_is_0_3_of_the_side():
    """Random views of a white image with blur and grayscale on: the zeros form one exact square
    (nothing after the cutout smooths it) of side 0.3 (+- 1 px) where it is not clipped, with its
    centre spread over the image."""
    side = 40
    augmentation = augmenter(size=side, **{**NOTHING, "blur_p": 1.0, "grayscale_p": 1.0, "cutout": 0.3})
    out = views(augmentation, torch.ones(3, side, side), 400)
    centres, inside = [], 0
    for view in out:
        zero = (view == 0).all(dim=0)
        rows, cols = torch.nonzero(zero.any(dim=1)).flatten(), torch.nonzero(zero.any(dim=0)).flatten()
        assert len(rows) and len(cols)
        assert zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        assert zero.sum() == len(rows) * len(cols) and not zero[-1].any() and not zero[:, -1].any()
        assert len(rows) <= 0.3 * side + 1 and len(cols) <= 0.3 * side + 1
        if 0 < rows.min() and rows.max() < side - 2 and 0 < cols.min() and cols.max() < side - 2:
            inside += 1
            assert abs(len(rows) - 0.3 * side) <= 1 and abs(len(cols) - 0.3 * side) <= 1
        centres.append(((rows.min() + rows.max()) / 2 / side).item())
    assert 0.3 < inside / len(out) < 0.7  # about (1 - 0.3)^2 of the centres keep the square whole
    assert min(centres) < 0.1 and max(centres) > 0.85


def reference_blur(image: np.ndarray, kernel: int, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with mirrored (reflect) borders, by NumPy."""
    offsets = np.arange(kernel) - kernel // 2
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    weights /= weights.sum()
    padded = np.pad(image, ((0, 0), (kernel // 2, kernel // 2), (kernel // 2, kernel // 2)), mode="reflect")
    height, width = image.shape[1:]
    rows = np.stack([sum(w * padded[:, i + k, :] for k, w in enumerate(weights)) for i in range(height)], axis=1)
    return np.stack([sum(w * rows[:, :, j + k] for k, w in enumerate(weights)) for j in range(width)], axis=2)


def test_blur_is_a_23_tap_gaussian_with_sigma_in_the_originals_range():
    image = torch.rand(3, 32, 32)
    # A wide sigma, so that the kernel's outer taps (11 px out) weigh and its size shows.
    fixed = views(augmenter(size=32, **{**NOTHING, "blur_p": 1.0, "blur_sigma": [6.0, 6.0]}), image, 1)[0]
    np.testing.assert_allclose(fixed.numpy(), reference_blur(image.numpy().astype(np.float64), 23, 6.0), atol=1e-5)
    delta = torch.zeros(3, 48, 48)
    delta[:, 24, 24] = 1.0
    out = views(augmenter(size=48, **{**NOTHING, "blur_p": 1.0}), delta, 200)
    profile = out[:, 0].sum(dim=1)  # (views, 48): the kernel along the columns
    offsets = torch.arange(48) - 24.0
    sigma = ((profile * offsets**2).sum(dim=1) / profile.sum(dim=1)).sqrt()
    assert sigma.min() >= 0 and sigma.max() < 2.0 + 0.02
    assert sigma.min() < 0.4 and sigma.max() > 1.8


@pytest.mark.parametrize("factor", ["brightness", "contrast", "saturation", "hue"])
def test_colour_jitter_strengths_are_the_originals(factor):
    """Each factor alone (its strength from ORIGINAL_AUGMENT, the others 0) on an image where it
    is measurable, against its definition: brightness scales, contrast scales the difference from
    the mean gray, saturation the difference from the pixel's gray, hue turns the colour wheel."""
    index = ["brightness", "contrast", "saturation", "hue"].index(factor)
    strength = ORIGINAL_AUGMENT["color_jitter"][index]
    alone = [strength if i == index else 0.0 for i in range(4)]
    image = torch.empty(3, 8, 8)
    if factor == "brightness":
        image[:] = 0.5
    elif factor == "contrast":
        image[:, :4], image[:, 4:] = 0.4, 0.6  # gray, mean 0.5
    else:
        image[0], image[1], image[2] = 0.6, 0.4, 0.3
    out = views(augmenter(size=8, **{**NOTHING, "color_jitter_p": 1.0, "color_jitter": alone}), image, 300).double()
    if factor == "brightness":
        measured = out[:, 0, 0, 0] / 0.5
    elif factor == "contrast":
        measured = (out[:, 0, 4, 0] - out[:, 0, 0, 0]) / 0.2
    elif factor == "saturation":
        measured = (out[:, 0, 0, 0] - out[:, 1, 0, 0]) / (0.6 - 0.4)
    else:
        hue = colorsys.rgb_to_hsv(0.6, 0.4, 0.3)[0]
        turned = torch.tensor([colorsys.rgb_to_hsv(*view[:, 0, 0].tolist())[0] for view in out])
        measured = (turned - hue + 0.5) % 1.0 - 0.5  # hue shift in turns, in [-0.5, 0.5)
    centre = 0.0 if factor == "hue" else 1.0
    assert measured.min() >= centre - strength - 1e-3 and measured.max() <= centre + strength + 1e-3
    assert measured.min() < centre - 0.8 * strength and measured.max() > centre + 0.8 * strength


@pytest.mark.parametrize("step", ["p", "flip_p", "color_jitter_p", "grayscale_p", "blur_p"])
def test_each_step_happens_with_the_originals_probability(step):
    """Over 1,000 views, the share where a step (alone) changed the image is within 0.05 of its
    probability (p: get_img_trans's 0.9, seen through the cutout that every augmented view gets)."""
    image = torch.rand(3, 24, 24)
    if step == "p":
        setting, expected = {**NOTHING, "p": 0.9, "cutout": 0.3}, 0.9
    else:
        setting, expected = {**NOTHING, step: ORIGINAL_AUGMENT[step], "blur_sigma": [1.0, 1.0]}, ORIGINAL_AUGMENT[step]
    out = views(augmenter(size=24, **setting), image, 1000, seed=1)
    changed = (out - image).abs().flatten(1).amax(dim=1) > 1e-4
    assert abs(changed.double().mean().item() - expected) < 0.05


def _colour_world(n: int, seed: int):
    """Images of one flat colour each, captioned with that colour's name: learnable in a few steps."""
    names = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}
    rng = np.random.default_rng(seed)
    keys = [list(names)[i % 4] for i in range(n)]
    images = np.stack([np.full((32, 32, 3), names[k], np.uint8) for k in keys])
    images = np.clip(images + rng.integers(-15, 16, images.shape), 0, 255).astype(np.uint8)
    return images, [[f"a {k} picture", f"something {k}"] for k in keys]


def test_demo_training_is_deterministic_and_learns():
    def run(steps):
        torch.manual_seed(0)
        model, tokenizer = demo.build_demo_clip(TINY)
        train = demo.CaptionedImages.from_captions(*_colour_world(32, 0), tokenizer)
        heldout = demo.CaptionedImages.from_captions(*_colour_world(4, 1), tokenizer)
        curve, metrics = demo.train_demo_clip(train, heldout, {**TINY, "steps": steps, "lr": 3e-3}, model, torch.device("cpu"), seed=0)
        return model, curve, metrics

    a, curve_a, metrics = run(40)
    b, curve_b, _ = run(40)
    assert curve_a["loss"].tolist() == curve_b["loss"].tolist()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert curve_a["loss"].iloc[-5:].mean() < curve_a["loss"].iloc[:5].mean()
    held = metrics["heldout"]
    assert held["n"] == 4 and held["chance"] == 0.25
    assert held["image_to_caption_top1"] > held["chance"]
