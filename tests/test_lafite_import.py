"""Importing Lafite training pickles: the restricted unpickler refuses anything that would run
code, and a pickle in Lafite's persistence format imports into networks that compute what the
pickled ones compute.

The pickles are built here without Lafite's code: stand-ins for ``torch_utils.persistence`` and
``dnnlib.util`` are registered only while pickling, and every network becomes the call
``_reconstruct_persistent_obj(meta)`` that Lafite's persistence writes, with a ``module_src`` that
leaves a file behind if anything ever executes it. Its weights are our networks' weights put into
Lafite's layout by the mapping written below from the measured facts
(../shared/docs/lafite-checkpoints.md), independently of the importer.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mindreader.generator.lafite import LafiteImportError, import_lafite
from mindreader.generator.networks import Discriminator, Generator
from mindreader.generator.store import load_networks

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]

# Lafite's language-free sizes that our networks can hold: 512-d CLIP conditions and 512-wide
# condition branches; the rest small.
Z_DIM, W_DIM, RESOLUTION, F_DIM = 8, 8, 16, 512
BUFFERS = ("resample_filter", "noise_const", "w_avg")


def our_networks():
    torch.manual_seed(0)
    g_kwargs = dict(
        z_dim=Z_DIM,
        w_dim=W_DIM,
        img_resolution=RESOLUTION,
        img_channels=3,
        c_dim=F_DIM,
        n_conditions=1,
        fusion="max",
        branch_width=512,
        channel_base=64,
        channel_max=8,
        mapping_layers=2,
    )
    G, G_ema = Generator(**g_kwargs), Generator(**g_kwargs)
    D = Discriminator(RESOLUTION, 3, F_DIM, 1, channel_base=64, channel_max=8, mbstd_group_size=2)
    with torch.no_grad():  # non-trivial biases and noise strengths, so that the test sees them
        for net in (G, G_ema, D):
            for name, p in net.named_parameters():
                if name.endswith(("bias", "noise_strength")):
                    p.add_(0.1 * torch.randn_like(p))
    return G, G_ema, D


def lafite_generator_layout(state: dict) -> dict:
    """Our G's state in Lafite's names and layouts (the facts measured on Lafite's own G)."""
    out = {}
    for name, t in state.items():
        branch = re.fullmatch(r"(.*)\.style\.branches\.0\.([01])\.(weight|bias)", name)
        affine = re.fullmatch(r"(.*)\.style\.affine\.(weight|bias)", name)
        if branch:
            name = f"{branch[1]}.pre_{branch[2]}.{branch[3]}"
        elif affine:
            name = f"{affine[1]}.affine_0.{affine[2]}"
            if affine[2] == "weight":  # Lafite's affine reads [condition, w]
                t = torch.cat([t[:, W_DIM:], t[:, :W_DIM]], dim=1)
        elif re.fullmatch(r"synthesis\.b\d+\.conv0\.weight", name):
            t = t.flip([2, 3])  # Lafite's up-sampling conv convolves
        out[name] = t.clone()
    out["mapping.w_avg"] = torch.randn(W_DIM)
    return out


def lafite_discriminator_layout(state: dict) -> dict:
    """Our D's state in Lafite's names: the projection head is b4.fts, and each block holds the
    [1, 3, 3, 1] filter once more at block level."""
    out = {name.replace("b4.heads.0.", "b4.fts."): t.clone() for name, t in state.items()}
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    for res in (16, 8):
        out[f"b{res}.resample_filter"] = torch.outer(taps, taps) / 64
    return out


@pytest.fixture
def lafite_modules(monkeypatch, tmp_path):
    """Stand-ins for Lafite's torch_utils.persistence and dnnlib.util, registered only while the
    test pickles; their reconstruct function leaves a file behind if it is ever called."""
    called = tmp_path / "reconstruct_called"

    def _reconstruct_persistent_obj(meta):
        called.write_text("called")

    persistence = types.ModuleType("torch_utils.persistence")
    _reconstruct_persistent_obj.__module__ = persistence.__name__
    _reconstruct_persistent_obj.__qualname__ = _reconstruct_persistent_obj.__name__
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    EasyDict = type("EasyDict", (dict,), {"__module__": util.__name__})
    util.EasyDict = EasyDict
    for name, module in (
        ("torch_utils", types.ModuleType("torch_utils")),
        ("torch_utils.persistence", persistence),
        ("dnnlib", types.ModuleType("dnnlib")),
        ("dnnlib.util", util),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict, called=called)


class PersistentNetwork:
    """Pickles as Lafite's persistence does: _reconstruct_persistent_obj(meta)."""

    def __init__(self, modules, class_name, state, module_src):
        self.modules, self.class_name, self.state, self.module_src = modules, class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name, state=self.state)
        return self.modules.reconstruct, (meta,)


def persistent_tree(modules, flat: dict, class_name: str, init_kwargs: dict, module_src: str) -> PersistentNetwork:
    """A network's flat state as nested persistent modules, each with a torch Module's __dict__."""
    children = OrderedDict()
    own_params, own_buffers = OrderedDict(), OrderedDict()
    for name, tensor in flat.items():
        head, _, rest = name.partition(".")
        if rest:
            children.setdefault(head, {})[rest] = tensor
        elif head in BUFFERS:
            own_buffers[head] = tensor
        else:
            own_params[head] = torch.nn.Parameter(tensor, requires_grad=False)
    state = {
        "training": False,
        "_parameters": own_params,
        "_buffers": own_buffers,
        "_non_persistent_buffers_set": set(),
        "_modules": OrderedDict(
            (name, persistent_tree(modules, sub, "Module", {}, module_src)) for name, sub in children.items()
        ),
        "_init_args": (),
        "_init_kwargs": modules.EasyDict(init_kwargs),
        "weight_gain": np.float64(0.25),  # Lafite's layers keep numpy scalars in their state
    }
    return PersistentNetwork(modules, class_name, state, module_src)


def lafite_kwargs(modules, g_changes=None, d_changes=None):
    """Constructor arguments as Lafite's train.py passes them (EasyDicts), for our test sizes."""
    E = modules.EasyDict
    synthesis = E(channel_base=64, channel_max=8, num_fp16_res=4, conv_clamp=256, change=256, f_dim=F_DIM)
    g = dict(
        z_dim=Z_DIM,
        c_dim=0,
        w_dim=W_DIM,
        img_resolution=RESOLUTION,
        img_channels=3,
        m_layer_features=F_DIM,
        m_num_layers=8,
        mapping_kwargs=E(num_layers=2),
        synthesis_kwargs=synthesis,
    )
    d = dict(
        c_dim=0,
        img_resolution=RESOLUTION,
        img_channels=3,
        use_norm=False,
        use_fts=True,
        channel_base=64,
        channel_max=8,
        num_fp16_res=4,
        conv_clamp=256,
        block_kwargs=E(),
        mapping_kwargs=E(),
        epilogue_kwargs=E(mbstd_group_size=2, f_dim=F_DIM),
    )
    for target, changes in ((g, g_changes), (d, d_changes)):
        for key, value in (changes or {}).items():
            if isinstance(value, dict):
                target[key] = E({**target[key], **value})
            else:
                target[key] = value
    return g, d


def write_lafite_pickle(path, modules, networks, sentinel, protocol=4, g_changes=None, d_changes=None):
    G, G_ema, D = networks
    module_src = f"open({str(sentinel)!r}, 'w').write('module_src was executed')\n"
    g_kwargs, d_kwargs = lafite_kwargs(modules, g_changes, d_changes)
    snapshot = {
        "training_set_kwargs": dict(modules.EasyDict(class_name="training.dataset.ImageFolderDataset", resolution=16)),
        "G": persistent_tree(modules, lafite_generator_layout(G.state_dict()), "Generator", g_kwargs, module_src),
        "D": persistent_tree(
            modules, lafite_discriminator_layout(D.state_dict()), "Discriminator", d_kwargs, module_src
        ),
        "G_ema": persistent_tree(
            modules, lafite_generator_layout(G_ema.state_dict()), "Generator", g_kwargs, module_src
        ),
        "augment_pipe": None,
    }
    with open(path, "wb") as f:
        pickle.dump(snapshot, f, protocol=protocol)


@pytest.mark.parametrize("protocol", [3, 4])  # 3: Lafite's Python 3.7 default (sets as builtins.set)
def test_persistence_pickle_imports_into_networks_that_compute_the_same(tmp_path, lafite_modules, protocol):
    networks = our_networks()
    sentinel = tmp_path / "module_src_executed"
    pkl = tmp_path / "network-snapshot-000000.pkl"
    write_lafite_pickle(pkl, lafite_modules, networks, sentinel, protocol)
    out = tmp_path / "imported"
    meta = import_lafite(pkl, out)
    assert not sentinel.exists() and not lafite_modules.called.exists()
    assert meta["generator"]["branch_width"] == 512 and meta["generator"]["conv_clamp"] == 256
    assert meta["discriminator"]["mbstd_group_size"] == 2 and len(meta["source"]["sha256"]) == 64

    G, G_ema, D, stored = load_networks(out)
    assert stored["source"]["lafite_pickle"] == str(pkl)
    for ours, imported in zip(networks, (G, G_ema, D)):
        expected = ours.state_dict()
        for name, tensor in imported.state_dict().items():
            assert torch.equal(tensor, expected[name]), name
    torch.manual_seed(3)
    z, c = torch.randn(4, Z_DIM), torch.nn.functional.normalize(torch.randn(4, 1, F_DIM), dim=2)
    with torch.no_grad():
        for ours, imported in zip(networks[:2], (G, G_ema)):
            assert torch.equal(imported(z, c, noise_mode="const"), ours(z, c, noise_mode="const"))
        img = networks[1](z, c, noise_mode="const")
        for got, want in zip(D(img, c), networks[2](img, c)):
            assert torch.equal(got, want)
        # generator.projection batch_sum: the logits Lafite's D gives the whole batch, its
        # projection summed over the batch and added to every sample's logit
        per_sample, fts = D(img, c)
        D.projection = "batch_sum"
        projection = (fts * c).sum(dim=(1, 2))
        torch.testing.assert_close(D(img, c)[0], per_sample - projection + projection.sum())


def test_finetuning_starts_from_the_import_and_names_a_config_key_that_differs(tmp_path, lafite_modules):
    from mindreader.generator.stages import from_pretrained

    pkl, out = tmp_path / "network-snapshot.pkl", tmp_path / "imported"
    write_lafite_pickle(pkl, lafite_modules, our_networks(), tmp_path / "sentinel")
    import_lafite(pkl, out)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["generator"]
    cfg.update(
        resolution=RESOLUTION,
        z_dim=Z_DIM,
        w_dim=W_DIM,
        mapping_layers=2,
        channel_base=64,
        channel_max=8,
        branch_width=512,
        branch_lr_multiplier=0.01,
        noise_inputs=True,
        mbstd_group_size=2,
    )
    _, G_ema, _, _, _ = from_pretrained(out, cfg, F_DIM, 2, "max", seed=0)
    imported = load_networks(out)[1]
    torch.manual_seed(4)
    z, c = torch.randn(2, Z_DIM), torch.randn(2, 1, F_DIM)
    with torch.no_grad():  # two heads given the same condition twice draw the imported image
        assert torch.allclose(G_ema(z, c.repeat(1, 2, 1), "const"), imported(z, c, "const"), atol=1e-6)
    cfg["channel_base"] = 128
    with pytest.raises(ValueError, match=r"channel_base 64, the config's generator.channel_base gives 128"):
        from_pretrained(out, cfg, F_DIM, 2, "max", seed=0)


class RunsCommand:
    """A pickled object whose unpickling calls os.system."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_pickle_that_would_run_a_command_is_refused_with_nothing_executed_and_no_output(tmp_path):
    sentinel = tmp_path / "command_ran"
    pkl = tmp_path / "evil.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"G": RunsCommand(f"touch {sentinel}"), "G_ema": None, "D": None}, f)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "mindreader.generator.lafite", str(pkl), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert "refused to load" in result.stderr and "system" in result.stderr and str(pkl) in result.stderr
    assert not sentinel.exists()
    assert not out.exists()


@pytest.mark.parametrize(
    "g_changes, d_changes, message",
    [
        ({"synthesis_kwargs": {"f_dim": 256}}, {"epilogue_kwargs": {"f_dim": 256}}, "f_dim 256"),
        ({"synthesis_kwargs": {"architecture": "resnet"}}, {}, "architecture 'resnet'"),
        ({"synthesis_kwargs": {"change": 8}}, {}, "structure 1"),
        ({"c_dim": 10}, {}, "c_dim 10"),
        ({}, {"use_norm": True}, "use_norm"),
        ({}, {"epilogue_kwargs": {"mbstd_num_channels": 2}}, "minibatch-std channels 2"),
        ({}, {"architecture": "skip"}, "architecture 'skip'"),
    ],
)
def test_unrepresentable_networks_are_refused_by_name_with_no_output(
    tmp_path, lafite_modules, g_changes, d_changes, message
):
    pkl = tmp_path / "other.pkl"
    write_lafite_pickle(pkl, lafite_modules, our_networks(), tmp_path / "sentinel", 4, g_changes, d_changes)
    out = tmp_path / "out"
    with pytest.raises(LafiteImportError, match=re.escape(message)) as err:
        import_lafite(pkl, out)
    assert str(pkl) in str(err.value)
    assert not out.exists()


def test_table_data_line_names_the_generator_init():
    from mindreader.evaluation.tables import data_note

    init = "Lafite pickle resources/weights/lafite.pkl (sha256 " + "ab" * 32 + ")"
    assert f"generator init {init}" in data_note({"generator_init": init}, [])


@pytest.fixture(scope="module")
def init_plans(tmp_path_factory):
    """Dry runs of the demo workflow with generator.init a generator folder, a Lafite pickle,
    and a path that does not exist."""
    from conftest import run_snakemake, tiny_config
    from test_workflow_lint import planned_jobs

    plans = {}
    for kind in ("folder", "lafite", "missing"):
        workdir = tmp_path_factory.mktemp(kind)
        init = {"folder": "pretrained_elsewhere", "lafite": "network-snapshot.pkl", "missing": "absent.pkl"}[kind]
        if kind == "folder":
            for name in ("network.json", "G.safetensors", "G_ema.safetensors", "D.safetensors"):
                (workdir / init).mkdir(exist_ok=True)
                (workdir / init / name).write_text(name)
        elif kind == "lafite":
            (workdir / init).write_bytes(b"a Lafite pickle")
        config = tiny_config(generator={"init": init})
        result = run_snakemake(workdir, [], config, "--dry-run", "--workflow-profile", "none", check=False)
        plans[kind] = (result, planned_jobs(result.stdout) if result.returncode == 0 else None, workdir)
    return plans


def test_init_folder_plans_no_pretraining_and_finetunes_from_it(init_plans):
    result, jobs, _ = init_plans["folder"]
    assert result.returncode == 0, result.stderr[-3000:]
    rules = {job["rule"] for job in jobs}
    assert "pretrain_generator" not in rules and "import_lafite" not in rules
    assert "finetune_generator" in rules


def test_init_lafite_pickle_plans_one_import_and_no_pretraining(init_plans):
    result, jobs, _ = init_plans["lafite"]
    assert result.returncode == 0, result.stderr[-3000:]
    rules = [job["rule"] for job in jobs]
    assert rules.count("import_lafite") == 1 and "pretrain_generator" not in rules
    (imported,) = [job for job in jobs if job["rule"] == "import_lafite"]
    assert "results/generator/imported/G_ema.safetensors" in imported["output"]


def test_init_that_does_not_exist_is_named_before_any_job(init_plans):
    result, _, _ = init_plans["missing"]
    assert result.returncode != 0
    assert "generator.init 'absent.pkl': no such file or folder" in result.stdout + result.stderr
