"""The weights registry without internet: `fetch` downloads from file:// URLs of registered test
entries and verifies what it downloads and what it finds, `resolve` checks the file a config
names, and each entry's preprocessing is what its network is fed."""

from __future__ import annotations

import hashlib

import open_clip
import pytest

from mindreader import weights
from mindreader.evaluation import networks

PAYLOAD = b"stand-in network weights\n"
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


def register_test_entry(monkeypatch, url: str, sha256: str) -> weights.WeightsSpec:
    """A registry entry 'test-net' (file net.pth) for this test only."""
    spec = weights.WeightsSpec("test-net", url, sha256, "net.pth", "a test entry")
    monkeypatch.setitem(weights.REGISTRY, spec.name, spec)
    return spec


@pytest.fixture
def served(tmp_path, monkeypatch) -> weights.WeightsSpec:
    """The test entry, its URL a local file holding PAYLOAD."""
    source = tmp_path / "server" / "net.pth"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    return register_test_entry(monkeypatch, source.as_uri(), PAYLOAD_SHA256)


def test_fetch_downloads_and_verifies_a_missing_file(served, tmp_path):
    dest = tmp_path / "weights" / "net.pth"
    assert weights.fetch(served.name, dest) == dest
    assert dest.read_bytes() == PAYLOAD


def test_fetch_without_a_destination_writes_the_default_path(served, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert weights.fetch(served.name) == weights.DEFAULT_DIR / "net.pth"
    assert (tmp_path / weights.DEFAULT_DIR / "net.pth").read_bytes() == PAYLOAD


def test_fetch_keeps_a_present_verified_file_without_downloading(tmp_path, monkeypatch):
    # the URL names no file, so any download would fail; the checksum is a prefix, as torch-hub
    # file names carry
    spec = register_test_entry(monkeypatch, (tmp_path / "absent.pth").as_uri(), PAYLOAD_SHA256[:8])
    dest = tmp_path / "net.pth"
    dest.write_bytes(PAYLOAD)
    written = dest.stat().st_mtime_ns
    assert weights.fetch(spec.name, dest) == dest
    assert dest.read_bytes() == PAYLOAD and dest.stat().st_mtime_ns == written


def test_fetch_replaces_a_present_file_that_does_not_verify(served, tmp_path):
    dest = tmp_path / "net.pth"
    dest.write_bytes(b"a truncated download")
    assert weights.fetch(served.name, dest) == dest
    assert dest.read_bytes() == PAYLOAD


def test_a_download_with_the_wrong_checksum_raises_and_leaves_no_file(served, tmp_path, monkeypatch):
    spec = register_test_entry(monkeypatch, served.url, "0" * 64)
    dest = tmp_path / "weights" / "net.pth"
    with pytest.raises(ValueError, match="downloaded file has sha256"):
        weights.fetch(spec.name, dest)
    assert list(dest.parent.iterdir()) == []  # neither the file nor its temporary download


def test_resolve_checks_presence_and_checksum(tmp_path):
    path = tmp_path / "net.pth"
    with pytest.raises(weights.MissingWeightsError, match="fetch\\('alexnet'"):
        weights.resolve(path, PAYLOAD_SHA256, "alexnet")
    path.write_bytes(PAYLOAD)
    assert weights.resolve(path, PAYLOAD_SHA256.upper(), "alexnet") == path
    assert weights.resolve(path, PAYLOAD_SHA256[:8]) == path
    assert weights.resolve(path, None) == path  # no checksum configured: presence suffices
    with pytest.raises(ValueError, match="does not match"):
        weights.resolve(path, "0" * 64, "alexnet")


def test_register_rejects_a_second_entry_of_a_name_and_malformed_checksums(monkeypatch):
    monkeypatch.setattr(weights, "REGISTRY", dict(weights.REGISTRY))
    with pytest.raises(ValueError, match="twice"):
        weights.register(weights.get_spec("alexnet"))
    for malformed in ("7be5be7", "7BE5BE79", "7be5be7g"):  # too short, upper case, not hex
        with pytest.raises(ValueError, match="hex"):
            weights.register(weights.WeightsSpec("new-net", "file:///x", malformed, "x.pth", ""))
    assert weights.register(weights.WeightsSpec("new-net", "file:///x", "7be5be79", "x.pth", "")).name == "new-net"


@pytest.mark.parametrize(
    "name, architecture",
    [("clip-vit-b-32-openai", "ViT-B-32-quickgelu"), ("clip-vit-l-14-openai", "ViT-L-14-quickgelu")],
)
def test_each_clip_entry_carries_openais_preprocessing(name, architecture):
    preprocess = weights.get_spec(name).preprocess
    assert preprocess["mean"] == open_clip.OPENAI_DATASET_MEAN and preprocess["std"] == open_clip.OPENAI_DATASET_STD
    assert preprocess["image_size"] == open_clip.get_model_config(architecture)["vision_cfg"]["image_size"]


@pytest.mark.parametrize("name", ["alexnet", "inception_v3", "efficientnet_b1"])
def test_each_imagenet_entry_carries_the_preprocessing_its_battery_network_applies(name):
    preprocess = weights.get_spec(name).preprocess
    assert preprocess["mean"] == networks.IMAGENET_MEAN and preprocess["std"] == networks.IMAGENET_STD
    assert preprocess["image_size"] == networks.SPECS[name].side
