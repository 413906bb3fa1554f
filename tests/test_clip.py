"""CLIP space: loading from local files, missing weights, targets, screening, embeddings, demo CLIP."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from mindreader import weights
from mindreader.clip import caption_scores, clip_targets, load_clip, preprocess_images, select_captions
from mindreader.clip import demo
from mindreader.clip.embed import embed_image_batches, write_image_embeddings
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
    emb = embed_image_batches(clip, [(ids[:3], images[:3]), (ids[3:], images[3:])], 4, n_aug=2)
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
