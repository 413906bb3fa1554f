"""Other methods' reconstructions of the NSD shared test images, read and checked before any
network runs (`python -m mindreader.score` scores them with the battery).

Every format is keyed to 0-based nsdIds, explicitly or by the order its method writes:
- ``h5``: our reconstructions file (images uint8 (N, H, W, 3), nsd_id);
- ``tensor``: a .pt (read with ``weights_only=True``: no pickle) or .npy array, (N, 3, H, W)
  float in [0, 1] or (N, H, W, 3) uint8, with a sidecar of nsdIds (.npy, or one per line);
- ``png``: a folder of ``{nsd_id}.png``, or ``{nsd_id}_{sample}.png`` for several samples;
- ``mindeye2``: MindEye2's ``*_all_recons.pt``, (N, 3, H, W) float in [0, 1], rows in the
  subject's test nsdIds ascending;
- ``brain-diffuser``: a folder of ``{i}.png``, i the position in the subject's first-appearance
  order of the shared images over the first ``sessions`` sessions (Brain-Diffuser's, Takagi &
  Nishimoto's order).
The allowed ids are the shared images the subject saw (in the design's sessions, or the first
``sessions``). Anything else is a `ExternalFormatError` naming the file and what was expected.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mindreader.evaluation.run import read_reconstructions
from mindreader.nsd import NSD
from mindreader.weights import sha256_of

FORMATS = ("h5", "tensor", "png", "mindeye2", "brain-diffuser")
BRAIN_DIFFUSER_SESSIONS = 37  # the public sessions Brain-Diffuser and Takagi & Nishimoto read
# The side below which the field's pixel metrics (425 px) upsample a reconstruction.
FIELD_SIDE = 425
PNG_NAME = re.compile(r"^(\d+)(?:_(\d+))?\.png$")
# Why an external row has no retrieval metrics (they score a mapper's predicted embeddings).
EXTERNAL_RETRIEVAL = "no predicted embeddings for external reconstructions"


class ExternalFormatError(ValueError):
    """Reconstructions that are not what their format declares."""


@dataclass
class External:
    """Validated reconstructions, rows in ascending nsdId."""

    nsd_id: np.ndarray  # int64 (N,), ascending, unique, in the subject's shared set
    samples: list[np.ndarray]  # per sample: (N, H, W, 3) uint8 or float32 in [0, 1]
    source: dict = field(default_factory=dict)  # format, path, sha256, ... for metrics.json


def read_external(
    path: str | os.PathLike,
    fmt: str,
    nsd: NSD,
    subject: str,
    ids: str | os.PathLike | None = None,  # tensor: the nsdId sidecar
    sessions: int | None = None,  # brain-diffuser: default 37; otherwise every session of the design
) -> External:
    """Read and check reconstructions of ``subject``'s shared test images in format ``fmt``."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ExternalFormatError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise ExternalFormatError(f"{path}: not found (expected {fmt} reconstructions)")
    if (ids is not None) != (fmt == "tensor"):
        raise ExternalFormatError(f"{path}: --ids is {'required' if fmt == 'tensor' else 'only for'} format tensor")
    if fmt == "brain-diffuser" and sessions is None:
        sessions = BRAIN_DIFFUSER_SESSIONS
    shared = nsd.shared_images(subject, sessions)  # first-appearance order
    source = {"format": fmt, "path": str(path.resolve()), "sha256": _sha256(path), "subject": subject}
    if sessions is not None:
        source["sessions"] = int(sessions)
    if fmt == "h5":
        images, nsd_id = _read_h5(path)
        samples = [images]
    elif fmt == "tensor":
        samples, nsd_id = [_images(_read_array(path), path, float_only=False)], _read_ids(Path(ids))
        source.update(ids=str(Path(ids).resolve()), ids_sha256=sha256_of(ids))
    elif fmt == "png":
        samples, nsd_id = _read_png_folder(path)
    elif fmt == "mindeye2":
        samples, nsd_id = [_images(_read_array(path), path, float_only=True)], np.sort(shared)
        if len(samples[0]) != len(nsd_id):
            raise ExternalFormatError(
                f"{path}: {len(samples[0])} images, expected {len(nsd_id)} (the subject's shared test images"
                f"{'' if sessions is None else f' of {sessions} sessions'}, ascending nsd id)"
            )
        source["order"] = "the subject's shared test nsdIds, ascending"
    else:
        samples, nsd_id = [_read_numbered_pngs(path, len(shared))], shared
        source["order"] = "first appearance of each shared image over the subject's trials"
    _check_ids(nsd_id, samples, shared, path, ids)
    order = np.argsort(nsd_id, kind="stable")
    return External(nsd_id[order], [s[order] for s in samples], source)


def _sha256(path: Path) -> str:
    """A file's sha256; for a folder, the sha256 of its sorted 'name sha256' lines."""
    if path.is_file():
        return sha256_of(path)
    lines = "".join(f"{p.name} {sha256_of(p)}\n" for p in sorted(path.iterdir()) if p.is_file())
    return hashlib.sha256(lines.encode()).hexdigest()


def _check_ids(nsd_id: np.ndarray, samples: list[np.ndarray], shared: np.ndarray, path: Path, ids) -> None:
    where = ids or path
    if len(nsd_id) != len(samples[0]):
        raise ExternalFormatError(
            f"{path}: {len(samples[0])} images but {len(nsd_id)} nsd ids in {where} (expected one id per image)"
        )
    values, counts = np.unique(nsd_id, return_counts=True)
    if (counts > 1).any():
        raise ExternalFormatError(
            f"{where}: duplicate nsd id(s) {values[counts > 1][:5].tolist()} (expected unique ids)"
        )
    outside = np.setdiff1d(nsd_id, shared)
    if len(outside):
        raise ExternalFormatError(
            f"{where}: nsd id(s) {outside[:5].tolist()} are not in the subject's shared test set "
            f"({len(shared)} images, 0-based nsd ids)"
        )


def _read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        images, nsd_id, _ = read_reconstructions(path)
    except OSError as err:
        raise ExternalFormatError(f"{path}: cannot read as HDF5 ({err}); expected datasets images and nsd_id") from err
    except ValueError as err:
        raise ExternalFormatError(str(err)) from err
    return images, nsd_id


def _read_array(path: Path) -> np.ndarray:
    """A .pt tensor (no pickle: weights_only) or a .npy array (no pickle)."""
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ExternalFormatError(f"{path}: cannot read as a .npy array without pickle ({err})") from err
    if path.suffix != ".pt":
        raise ExternalFormatError(f"{path}: expected a .pt or .npy file")
    import torch

    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        # torch names what it refused on a line like "... Unsupported global: GLOBAL module.name"
        why = [line.strip().split(" was not an allowed")[0] for line in str(err).splitlines() if "Unsupported" in line]
        raise ExternalFormatError(
            f"{path}: refused: not a tensor that torch.load(weights_only=True) reads (a pickled object is "
            f"never unpickled); expected a tensor saved with torch.save{f' ({why[0]})' if why else ''}"
        ) from err
    if not isinstance(tensor, torch.Tensor):
        raise ExternalFormatError(f"{path}: holds a {type(tensor).__name__}, expected one tensor")
    return tensor.detach().float().numpy() if tensor.is_floating_point() else tensor.numpy()


def _images(array: np.ndarray, path: Path, float_only: bool) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] -> float32 (N, H, W, 3); (N, H, W, 3) uint8 as it is."""
    expected = "(N, 3, H, W) float in [0, 1]" + ("" if float_only else " or (N, H, W, 3) uint8")
    if array.ndim == 4 and array.shape[1] == 3 and np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0.0 or array.max() > 1.0:
            raise ExternalFormatError(
                f"{path}: values span [{np.nanmin(array):.4g}, {np.nanmax(array):.4g}], expected {expected}"
            )
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1), dtype=np.float32)
    if not float_only and array.ndim == 4 and array.shape[-1] == 3 and array.dtype == np.uint8:
        return array
    raise ExternalFormatError(f"{path}: {array.dtype} {tuple(array.shape)}, expected {expected}")


def _read_ids(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ExternalFormatError(f"{path}: nsd id file not found (expected .npy or one 0-based id per line)")
    if path.suffix == ".npy":
        try:
            ids = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ExternalFormatError(f"{path}: cannot read as a .npy array without pickle ({err})") from err
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ExternalFormatError(f"{path}: {ids.dtype} {ids.shape}, expected 1-D integer nsd ids")
        return ids.astype(np.int64)
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [line for line in lines if not line.isdigit()]
    if bad:
        raise ExternalFormatError(f"{path}: {bad[0]!r} is not a 0-based nsd id (expected one integer per line)")
    return np.array([int(line) for line in lines], dtype=np.int64)


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            mode, array = image.mode, np.asarray(image)
    except OSError as err:
        raise ExternalFormatError(f"{path}: cannot read as an image ({err})") from err
    if mode != "RGB":
        raise ExternalFormatError(f"{path}: {mode} image, expected 8-bit RGB")
    return array


def _stack(files: list[Path], folder: Path) -> np.ndarray:
    images = [_read_png(p) for p in files]
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1:
        raise ExternalFormatError(f"{folder}: images of different sizes {shapes[:3]}, expected one size")
    return np.stack(images)


def _png_names(folder: Path) -> dict[tuple[int, int | None], Path]:
    if not folder.is_dir():
        raise ExternalFormatError(f"{folder}: expected a folder of PNG images")
    names = {}
    for p in sorted(folder.glob("*.png")):
        match = PNG_NAME.match(p.name)
        if match is None:
            raise ExternalFormatError(f"{p}: unexpected name, expected {{nsd_id}}.png or {{nsd_id}}_{{sample}}.png")
        names[(int(match[1]), None if match[2] is None else int(match[2]))] = p
    if not names:
        raise ExternalFormatError(f"{folder}: no PNG images")
    return names


def _read_png_folder(folder: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """{nsd_id}.png, or {nsd_id}_{sample}.png with samples 0..S-1 for every id."""
    names = _png_names(folder)
    plain = {key for key in names if key[1] is None}
    if plain and len(plain) != len(names):
        raise ExternalFormatError(
            f"{folder}: mixes {{nsd_id}}.png and {{nsd_id}}_{{sample}}.png names, expected one scheme"
        )
    ids = np.array(sorted({key[0] for key in names}), dtype=np.int64)
    if plain:
        return [_stack([names[(i, None)] for i in ids], folder)], ids
    n_samples = max(key[1] for key in names) + 1
    for i in ids:
        absent = [s for s in range(n_samples) if (i, s) not in names]
        if absent:
            raise ExternalFormatError(
                f"{folder}: no {i}_{absent[0]}.png (expected samples 0..{n_samples - 1} of every nsd id)"
            )
    return [_stack([names[(i, s)] for i in ids], folder) for s in range(n_samples)], ids


def _read_numbered_pngs(folder: Path, count: int) -> np.ndarray:
    """{i}.png for i in 0..count-1, nothing else."""
    names = _png_names(folder)
    wanted = {(i, None) for i in range(count)}
    absent = sorted(key[0] for key in wanted - set(names))
    if absent:
        raise ExternalFormatError(f"{folder}: no {absent[0]}.png (expected 0.png .. {count - 1}.png, {count} images)")
    extra = sorted(set(names) - wanted, key=lambda key: (key[0], key[1] or 0))
    if extra:
        raise ExternalFormatError(
            f"{names[extra[0]]}: unexpected (expected 0.png .. {count - 1}.png, the subject's {count} shared images)"
        )
    return _stack([names[(i, None)] for i in range(count)], folder)
