"""Import a Lafite / StyleGAN2-ADA training pickle (``network-snapshot-*.pkl``: G, D, G_ema as
Lafite's training loop saves them) into a generator folder that ``store.load_networks`` reads,
without running anything from the pickle.

    python -m mindreader.generator.lafite IN.pkl OUT_DIR

Lafite pickles every network as a ``torch_utils.persistence`` record: a call to
``_reconstruct_persistent_obj(meta)`` whose meta carries the whole source of the network's module
(which unpickling would normally execute), the class name, the constructor arguments and the
module's state (parameters, buffers, sub-modules). A restricted unpickler admits only what
rebuilds tensors (storages are read by ``torch.load(weights_only=True)``), plain containers,
numeric numpy scalars, Lafite's EasyDict (as a plain dict) and the persistence call, which here
only records the meta as data: the embedded source is never run. Any other global is refused
before anything is called. The sizes come from the pickled constructor arguments; what our
networks cannot represent is refused with the reason, and nothing is written.

Parameter mapping (../shared/docs/lafite-checkpoints.md, measured): each synthesis layer's
``pre_0``/``pre_1`` are our ``style.branches.0.0``/``.1``, its ``affine_0`` our ``style.affine``
with the input columns reordered (Lafite concatenates [condition, w], we [w, condition]); Lafite's
up-sampling convolutions convolve (flip_weight=False) where ours correlate, so their weights are
flipped over both spatial axes; ``mapping.w_avg`` (truncation) has no counterpart. In D, the
projection ``b4.fts`` is our ``b4.heads.0`` and the block-level resampling filters are dropped
(ours are per layer, checked equal).
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mindreader.generator.layers import setup_filter
from mindreader.generator.networks import Discriminator, Generator
from mindreader.generator.store import save_networks
from mindreader.provenance import write_provenance
from mindreader.weights import sha256_of

# Lafite's condition branches end in 512 features whatever the condition width (pre_1's output).
LAFITE_BRANCH_WIDTH = 512
# Lafite's learning-rate multiplier of the condition branches (fixed in its code).
LAFITE_BRANCH_LR_MULTIPLIER = 0.01
LAFITE_RESAMPLE_FILTER = [1, 3, 3, 1]

# Constructor parameters in positional order, and the defaults our import relies on, of Lafite's
# networks (training/networks.py). StyleGAN2-ADA's Generator takes the first seven.
GENERATOR_PARAMS = (
    "z_dim",
    "c_dim",
    "w_dim",
    "img_resolution",
    "img_channels",
    "mapping_kwargs",
    "synthesis_kwargs",
    "m_layer_features",
    "m_num_layers",
)
DISCRIMINATOR_PARAMS = (
    "c_dim",
    "img_resolution",
    "img_channels",
    "architecture",
    "channel_base",
    "channel_max",
    "num_fp16_res",
    "conv_clamp",
    "cmap_dim",
    "use_norm",
    "use_fts",
    "block_kwargs",
    "mapping_kwargs",
    "epilogue_kwargs",
)
MAPPING_DEFAULTS = {
    "num_layers": 8,
    "embed_features": None,
    "layer_features": None,
    "activation": "lrelu",
    "lr_multiplier": 0.01,
    "w_avg_beta": 0.995,
}
SYNTHESIS_DEFAULTS = {
    "channel_base": 32768,
    "channel_max": 512,
    "num_fp16_res": 0,
    "change": 256,
    "architecture": "skip",
    "resample_filter": LAFITE_RESAMPLE_FILTER,
    "conv_clamp": None,
    "fp16_channels_last": False,
    "f_dim": 512,
    "kernel_size": 3,
    "use_noise": True,
    "activation": "lrelu",
}
DISCRIMINATOR_DEFAULTS = {
    "architecture": "resnet",
    "channel_base": 32768,
    "channel_max": 512,
    "num_fp16_res": 0,
    "conv_clamp": None,
    "cmap_dim": None,
    "use_norm": False,
    "use_fts": True,
    "block_kwargs": {},
    "mapping_kwargs": {},
    "epilogue_kwargs": {},
}
BLOCK_DEFAULTS = {
    "activation": "lrelu",
    "resample_filter": LAFITE_RESAMPLE_FILTER,
    "fp16_channels_last": False,
    "freeze_layers": 0,
}
EPILOGUE_DEFAULTS = {"mbstd_group_size": 4, "mbstd_num_channels": 1, "activation": "lrelu", "f_dim": 512}


class LafiteImportError(ValueError):
    """The pickle is refused (a global outside the admitted set) or cannot be represented."""


@dataclass
class PersistentRecord:
    """A ``torch_utils.persistence`` object read as data: its class name and its state (the
    module's ``__dict__``: _parameters, _buffers, _modules, _init_args, _init_kwargs, ...)."""

    class_name: str
    state: dict


class EasyDictData(dict):
    """dnnlib.util.EasyDict read as the plain dict it is."""


def persistent_record(meta) -> PersistentRecord:
    # Stands in for torch_utils.persistence._reconstruct_persistent_obj: keeps the meta as data,
    # drops module_src unread.
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise LafiteImportError(f"a persistence record with an unknown meta ({type(meta).__name__})")
    if not isinstance(meta.get("class_name"), str) or not isinstance(meta.get("state"), dict):
        raise LafiteImportError("a persistence record without a class name or state")
    return PersistentRecord(meta["class_name"], dict(meta["state"]))


def storage_from_bytes(data) -> torch.storage.TypedStorage:
    # Stands in for torch.storage._load_from_bytes (a full torch.load): the bytes hold one torch.save
    # of a storage, which the weights-only loader reads.
    if not isinstance(data, (bytes, bytearray)):
        raise LafiteImportError(f"tensor storage given as {type(data).__name__}, expected bytes")
    buffer = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation notices
        storage = torch.load(buffer, weights_only=True, map_location="cpu")
    if not isinstance(storage, torch.storage.TypedStorage):
        raise LafiteImportError(f"tensor storage bytes hold a {type(storage).__name__}, expected a storage")
    return storage


def rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    # torch._utils._rebuild_tensor_v2 for hook-free tensors in a storage of the pickle's own.
    if not isinstance(storage, torch.storage.TypedStorage):
        raise LafiteImportError(f"a tensor over a {type(storage).__name__}, expected a storage")
    if backward_hooks or (metadata and not all(isinstance(v, bool) for v in metadata.values())):
        raise LafiteImportError("a tensor with backward hooks or unknown metadata")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch._utils._rebuild_tensor_v2(
            storage, storage_offset, tuple(size), tuple(stride), False, collections.OrderedDict(), metadata
        )


def rebuild_parameter(data, requires_grad, backward_hooks):
    # torch._utils._rebuild_parameter: a parameter is read as its plain tensor.
    if not isinstance(data, torch.Tensor) or backward_hooks:
        raise LafiteImportError("a parameter that is not a hook-free tensor")
    return data


def numeric_dtype(spec, align=False, copy=True):
    # numpy.dtype as pickles call it; always a fresh copy (pickle's BUILD then sets its state).
    if not isinstance(spec, str):
        raise LafiteImportError(f"a numpy dtype given as {type(spec).__name__}")
    return np.dtype(spec, bool(align), True)


def numeric_scalar(dtype, data):
    # numpy's multiarray.scalar: one number from its bytes; only plain numeric dtypes.
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.names or dtype.kind not in "biufc":
        raise LafiteImportError(f"a numpy scalar of dtype {dtype!r}: only numbers are read")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise LafiteImportError(f"a numpy {dtype} scalar with {type(data).__name__} data of the wrong size")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


# Every global the unpickler admits, and what it gets instead.
ADMITTED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,  # protocol <= 3 pickles (Python 3.7, Lafite's) spell sets this way
    ("builtins", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): EasyDictData,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): persistent_record,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): storage_from_bytes,
    ("numpy", "dtype"): numeric_dtype,
    ("numpy.core.multiarray", "scalar"): numeric_scalar,
    ("numpy._core.multiarray", "scalar"): numeric_scalar,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of ADMITTED, each to a data-only stand-in."""

    def find_class(self, module: str, name: str):
        try:
            return ADMITTED[(module, name)]
        except KeyError:
            raise LafiteImportError(
                f"refused to load {module}.{name}: only tensors, plain containers, numbers and Lafite's "
                "persistence records are read from a Lafite pickle, and nothing in it is executed"
            ) from None

    def persistent_load(self, pid):
        raise LafiteImportError("a persistent id (a torch.save file, not a Lafite training pickle)")


def read_pickle(path: str | Path) -> dict:
    """The snapshot dict of a Lafite training pickle, its networks as PersistentRecords."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f).load()
    except LafiteImportError as err:
        raise LafiteImportError(f"{path}: {err}") from None
    except OSError as err:
        raise LafiteImportError(f"{path}: cannot read ({err})") from err
    except Exception as err:  # malformed pickles raise many types
        raise LafiteImportError(f"{path}: not a readable Lafite training pickle ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise LafiteImportError(f"{path}: holds a {type(data).__name__}, expected the dict of G, D, G_ema")
    for name, class_name in (("G", "Generator"), ("G_ema", "Generator"), ("D", "Discriminator")):
        record = data.get(name)
        if not isinstance(record, PersistentRecord) or record.class_name != class_name:
            found = record.class_name if isinstance(record, PersistentRecord) else type(record).__name__
            raise LafiteImportError(f"{path}: '{name}' is {found}, expected a pickled Lafite {class_name}")
    return data


def flat_state(record: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of a record and its sub-modules, by state-dict name."""
    state = record.state
    skipped = state.get("_non_persistent_buffers_set") or set()
    out = {}
    tensors = [*state.get("_parameters", {}).items()]
    tensors += [(k, v) for k, v in state.get("_buffers", {}).items() if k not in skipped]
    for name, tensor in tensors:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise LafiteImportError(f"{prefix}{name} is a {type(tensor).__name__}, expected a tensor")
        out[prefix + name] = tensor.detach().float()
    for name, child in state.get("_modules", {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise LafiteImportError(f"sub-module {prefix}{name} is a {type(child).__name__}, not a Lafite module")
        out.update(flat_state(child, f"{prefix}{name}."))
    return out


def init_arguments(record: PersistentRecord, params: tuple[str, ...]) -> dict:
    """The constructor arguments a persistent record was built with, by name."""
    args = record.state.get("_init_args", ())
    kwargs = dict(record.state.get("_init_kwargs", {}))
    if len(args) > len(params):
        raise LafiteImportError(
            f"{record.class_name} built with {len(args)} positional arguments, expected <= {len(params)}"
        )
    bound = dict(zip(params, args))
    for name, value in kwargs.items():
        if name not in params:
            raise LafiteImportError(f"{record.class_name} built with an unknown argument '{name}'")
        bound[name] = value
    return bound


def with_defaults(given, defaults: dict, what: str) -> dict:
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        raise LafiteImportError(f"{what}: unknown arguments {unknown} (known: {sorted(defaults)})")
    return {**defaults, **(given or {})}


def require(condition: bool, message: str) -> None:
    if not condition:
        raise LafiteImportError(message)


def generator_kwargs(init: dict) -> dict:
    """Our Generator's constructor arguments for a Lafite Generator, or why there are none."""
    mapping = with_defaults(init.get("mapping_kwargs"), MAPPING_DEFAULTS, "G mapping_kwargs")
    synthesis = with_defaults(init.get("synthesis_kwargs"), SYNTHESIS_DEFAULTS, "G synthesis_kwargs")
    res = int(init["img_resolution"])
    require(
        int(init.get("c_dim") or 0) == 0,
        f"G has labels (c_dim {init.get('c_dim')}) embedded in its mapping network; ours takes no labels",
    )
    require(synthesis["architecture"] == "skip", f"G architecture '{synthesis['architecture']}', ours is 'skip'")
    require(
        synthesis["change"] >= res,
        f"G uses Lafite's structure 1 above {synthesis['change']} px (change); ours is structure 2 at every layer",
    )
    require(
        synthesis["f_dim"] == LAFITE_BRANCH_WIDTH,
        f"G's condition width f_dim {synthesis['f_dim']}: its branches are f_dim -> (f_dim + 512) / 2 -> 512 wide; "
        "ours have one width, so only f_dim 512 maps",
    )
    require(list(synthesis["resample_filter"]) == LAFITE_RESAMPLE_FILTER, "G resample filter other than [1, 3, 3, 1]")
    require(synthesis["kernel_size"] == 3, f"G kernel size {synthesis['kernel_size']}, ours is 3")
    require(synthesis["activation"] == "lrelu", f"G activation '{synthesis['activation']}', ours is lrelu")
    require(mapping["activation"] == "lrelu", f"G mapping activation '{mapping['activation']}', ours is lrelu")
    require(
        mapping["layer_features"] in (None, init["w_dim"]),
        f"G mapping width {mapping['layer_features']}, ours is w_dim ({init['w_dim']})",
    )
    require(res >= 8, f"resolution {res}: our discriminator needs at least 8")
    require(init["img_channels"] == 3, f"G draws {init['img_channels']} colour channels, the workflow's images are RGB")
    return {
        "z_dim": int(init["z_dim"]),
        "w_dim": int(init["w_dim"]),
        "img_resolution": res,
        "img_channels": int(init["img_channels"]),
        "c_dim": int(synthesis["f_dim"]),
        "n_conditions": 1,
        "fusion": "max",
        "branch_width": LAFITE_BRANCH_WIDTH,
        "channel_base": int(synthesis["channel_base"]),
        "channel_max": int(synthesis["channel_max"]),
        "mapping_layers": int(mapping["num_layers"]),
        "mapping_lr_multiplier": float(mapping["lr_multiplier"]),
        "branch_lr_multiplier": LAFITE_BRANCH_LR_MULTIPLIER,
        "use_noise": bool(synthesis["use_noise"]),
        "num_fp16_res": int(synthesis["num_fp16_res"]),
        "conv_clamp": _optional_float(synthesis["conv_clamp"]),
        "precision": "fp16",
    }


def discriminator_kwargs(init: dict, f_dim: int) -> dict:
    """Our Discriminator's constructor arguments for a Lafite Discriminator, or why there are none."""
    init = {**DISCRIMINATOR_DEFAULTS, **init}
    block = with_defaults(init["block_kwargs"], BLOCK_DEFAULTS, "D block_kwargs")
    epilogue = with_defaults(init["epilogue_kwargs"], EPILOGUE_DEFAULTS, "D epilogue_kwargs")
    require(int(init.get("c_dim") or 0) == 0, f"D is label-conditional (c_dim {init.get('c_dim')}, cmap); ours is not")
    require(init["architecture"] == "resnet", f"D architecture '{init['architecture']}', ours is 'resnet'")
    require(bool(init["use_fts"]), "D without the projection head (use_fts False); ours has one per condition")
    require(not init["use_norm"], "D normalises its projection features (use_norm True); ours does not")
    require(block["activation"] == "lrelu" and epilogue["activation"] == "lrelu", "D activation other than lrelu")
    require(list(block["resample_filter"]) == LAFITE_RESAMPLE_FILTER, "D resample filter other than [1, 3, 3, 1]")
    require(epilogue["mbstd_num_channels"] == 1, f"D minibatch-std channels {epilogue['mbstd_num_channels']}, ours 1")
    require(epilogue["mbstd_group_size"] is not None, "D minibatch-std over the whole batch (group None); ours groups")
    require(epilogue["f_dim"] == f_dim, f"D projects to {epilogue['f_dim']} features, G is conditioned on {f_dim}")
    return {
        "img_resolution": int(init["img_resolution"]),
        "img_channels": int(init["img_channels"]),
        "c_dim": int(epilogue["f_dim"]),
        "n_conditions": 1,
        "channel_base": int(init["channel_base"]),
        "channel_max": int(init["channel_max"]),
        "mbstd_group_size": int(epilogue["mbstd_group_size"]),
        "num_fp16_res": int(init["num_fp16_res"]),
        "conv_clamp": _optional_float(init["conv_clamp"]),
        "precision": "fp16",
    }


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


_STYLE = re.compile(r"^(synthesis\.b\d+\.(?:conv0|conv1|torgb))\.(pre_0|pre_1|affine_0)\.(weight|bias)$")
_UP_CONV = re.compile(r"^synthesis\.b\d+\.conv0\.weight$")  # conv0 exists only in up-sampling blocks
_STYLE_NAMES = {"pre_0": "style.branches.0.0", "pre_1": "style.branches.0.1", "affine_0": "style.affine"}


def generator_state(lafite: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Lafite's G state in our names and layouts."""
    out = {}
    for name, tensor in lafite.items():
        if name == "mapping.w_avg":
            continue  # truncation's running mean: ours has no truncation
        match = _STYLE.match(name)
        if match:
            layer, part, kind = match.groups()
            if part == "affine_0" and kind == "weight":
                # [condition, w] columns -> [w, condition]
                tensor = torch.cat([tensor[:, LAFITE_BRANCH_WIDTH:], tensor[:, :LAFITE_BRANCH_WIDTH]], dim=1)
            name = f"{layer}.{_STYLE_NAMES[part]}.{kind}"
        elif _UP_CONV.match(name):
            tensor = tensor.flip([2, 3])  # Lafite convolves here (flip_weight=False), ours correlates
        out[name] = tensor
    return out


_D_BLOCK_FILTER = re.compile(r"^b\d+\.resample_filter$")


def discriminator_state(lafite: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Lafite's D state in our names (the block-level filters are per layer in ours)."""
    out = {}
    for name, tensor in lafite.items():
        if _D_BLOCK_FILTER.match(name):
            require(
                torch.allclose(tensor, setup_filter(LAFITE_RESAMPLE_FILTER)),
                f"D {name} is not the [1, 3, 3, 1] filter ours uses",
            )
            continue
        out[re.sub(r"^b4\.fts\.", "b4.heads.0.", name)] = tensor
    return out


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Copy ``state`` into ``module``: the same names and shapes, and equal filter buffers."""
    ours = module.state_dict()
    missing, unexpected = sorted(set(ours) - set(state)), sorted(set(state) - set(ours))
    require(
        not missing and not unexpected,
        f"{what} does not map onto ours (not a Lafite structure-2 network?): missing {_first(missing)}, "
        f"unexpected {_first(unexpected)}",
    )
    for name, tensor in state.items():
        require(
            tensor.shape == ours[name].shape,
            f"{what} {name} has shape {list(tensor.shape)}, ours {list(ours[name].shape)}",
        )
        if name.endswith("resample_filter"):
            require(torch.allclose(tensor, ours[name]), f"{what} {name} differs from our [1, 3, 3, 1] filter")
    module.load_state_dict(state)


def _first(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "") or "none"


def convert(data: dict, path: str | Path) -> tuple[Generator, Generator, Discriminator, dict, dict]:
    """Our G, G_ema, D and their constructor arguments from a read Lafite pickle."""
    try:
        g_init = init_arguments(data["G"], GENERATOR_PARAMS)
        require(
            init_arguments(data["G_ema"], GENERATOR_PARAMS) == g_init, "G and G_ema were built with different arguments"
        )
        g_kwargs = generator_kwargs(g_init)
        d_kwargs = discriminator_kwargs(init_arguments(data["D"], DISCRIMINATOR_PARAMS), g_kwargs["c_dim"])
        require(
            d_kwargs["img_resolution"] == g_kwargs["img_resolution"],
            f"D sees {d_kwargs['img_resolution']} px, G draws {g_kwargs['img_resolution']} px",
        )
        G, G_ema, D = Generator(**g_kwargs), Generator(**g_kwargs), Discriminator(**d_kwargs)
        load_into(G, generator_state(flat_state(data["G"])), "G")
        load_into(G_ema, generator_state(flat_state(data["G_ema"])), "G_ema")
        load_into(D, discriminator_state(flat_state(data["D"])), "D")
    except LafiteImportError as err:
        raise LafiteImportError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise LafiteImportError(f"{path}: unexpected Lafite network arguments ({type(err).__name__}: {err})") from err
    return G, G_ema, D, g_kwargs, d_kwargs


def import_lafite(pickle_path: str | Path, out_dir: str | Path) -> dict:
    """Read a Lafite training pickle and write a generator folder; returns network.json's
    contents. Everything is checked before the folder is written."""
    pickle_path = Path(pickle_path)
    G, G_ema, D, g_kwargs, d_kwargs = convert(read_pickle(pickle_path), pickle_path)
    source = {"lafite_pickle": str(pickle_path), "sha256": sha256_of(pickle_path)}
    meta = {"stage": "import", "conditions": ["img"], "source": source}
    save_networks(out_dir, G, G_ema, D, g_kwargs, d_kwargs, **meta)
    return {"generator": g_kwargs, "discriminator": d_kwargs, **meta}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mindreader.generator.lafite",
        description="Import a Lafite / StyleGAN2-ADA training pickle (G, D, G_ema) into a generator folder, "
        "without executing anything from the pickle.",
    )
    parser.add_argument("pickle", help="Lafite training snapshot (network-snapshot-*.pkl)")
    parser.add_argument("out_dir", help="generator folder to write (network.json, G/G_ema/D.safetensors)")
    args = parser.parse_args(argv)
    try:
        meta = import_lafite(args.pickle, args.out_dir)
    except LafiteImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    write_provenance(args.out_dir, source=meta["source"])
    g = meta["generator"]
    print(
        f"imported {args.pickle} -> {args.out_dir}: {g['img_resolution']} px, z {g['z_dim']}, w {g['w_dim']}, "
        f"conditions {g['c_dim']}-d, channel_base {g['channel_base']}, channel_max {g['channel_max']}, "
        f"mapping layers {g['mapping_layers']}, sha256 {meta['source']['sha256']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
