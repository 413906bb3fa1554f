"""Streaming NSD betas through the nsdgeneral mask, a chunk of trials at a time.

A session is ~1 GB of int16, ~15k of whose ~700k voxels per trial are kept. NIfTI stores the
trial as the slowest axis, so the gzip stream is decompressed once, sequentially, and each chunk
of trials is masked as soon as it is complete (nibabel's proxy slicing of a .nii.gz restarts
decompression for every slice). HDF5 betas are (trial, Z, Y, X) and are read in trial slabs.
Either way voxels come out in the canonical order: C order over the NIfTI (X, Y, Z) mask.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

# Compressed bytes read from disk per step: large enough that zlib's per-call overhead vanishes.
READ_BLOCK_BYTES = 4 << 20
# Most decompressed bytes produced by one zlib call.
MAX_PIECE_BYTES = 8 << 20


class NSDFormatError(ValueError):
    """An NSD file is missing, unreadable, or disagrees with the layout or with another file."""


class NSDMissingFileError(NSDFormatError, FileNotFoundError):
    """A file the NSD layout requires is not there."""


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else an NSDMissingFileError naming it and what it should hold."""
    if not path.is_file():
        raise NSDMissingFileError(f"{path}: missing; expected {what}")
    return path


@dataclass(frozen=True)
class Mask:
    """The voxels kept from a volume, in canonical order."""

    path: Path
    shape: tuple[int, int, int]  # (X, Y, Z) of the volume
    voxel_xyz: np.ndarray  # int32 (voxels, 3): NIfTI coordinates, C order over (X, Y, Z)

    @property
    def n_voxels(self) -> int:
        return len(self.voxel_xyz)

    @property
    def flat_offsets(self) -> np.ndarray:
        """Offset of each voxel within one stored volume: x fastest, as in NIfTI data and as in
        the (Z, Y, X) C-ordered volumes of the HDF5 betas."""
        x, y, z = self.voxel_xyz.T.astype(np.int64)
        nx, ny, _ = self.shape
        return x + nx * (y + ny * z)


def read_mask(path: Path) -> Mask:
    """The nsdgeneral ROI (voxels with value > 0) of a NIfTI file."""
    import nibabel as nib

    require_file(path, "the nsdgeneral ROI mask, a 3-D NIfTI (X, Y, Z)")
    try:
        values = np.asarray(nib.load(path).dataobj)
    except Exception as err:  # nibabel and gzip raise many types for a damaged file
        raise NSDFormatError(f"{path}: cannot read the ROI mask as NIfTI ({err})") from err
    if values.ndim != 3:
        raise NSDFormatError(f"{path}: expected a 3-D (X, Y, Z) mask, got shape {values.shape}")
    voxel_xyz = np.argwhere(values > 0).astype(np.int32)
    if len(voxel_xyz) == 0:
        raise NSDFormatError(f"{path}: the mask has no voxel > 0")
    return Mask(path=path, shape=tuple(int(n) for n in values.shape), voxel_xyz=voxel_xyz)


@dataclass(frozen=True)
class BetasFile:
    """One session's betas file: where it is, its format and its 4-D shape as (X, Y, Z, trials)."""

    path: Path
    fmt: str
    shape: tuple[int, int, int, int]
    dtype: np.dtype  # as stored, byte order included
    data_offset: int  # NIfTI only: bytes before the data in the decompressed stream

    @property
    def n_trials(self) -> int:
        return self.shape[3]

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return self.shape[:3]


def open_betas(path: Path, fmt: str) -> BetasFile:
    """Read the header of a betas file and check that it holds unscaled int16 4-D betas."""
    require_file(path, f"the betas of one session ({fmt})")
    if fmt == "nifti":
        return _open_nifti(path)
    if fmt == "hdf5":
        return _open_hdf5(path)
    raise ValueError(f"betas format must be nifti or hdf5, got {fmt!r}")


def _open_nifti(path: Path) -> BetasFile:
    import nibabel as nib

    try:
        image = nib.load(path)
        proxy = image.dataobj
        shape, dtype, offset = tuple(int(n) for n in image.shape), image.get_data_dtype(), int(proxy.offset)
        slope, inter = float(proxy.slope), float(proxy.inter)
    except Exception as err:  # nibabel and gzip raise many types for a damaged file
        raise NSDFormatError(f"{path}: cannot read as a NIfTI betas file ({err})") from err
    if len(shape) != 4:
        raise NSDFormatError(f"{path}: expected 4-D betas (X, Y, Z, trial), got shape {shape}")
    if dtype.kind != "i" or dtype.itemsize != 2 or (slope, inter) != (1.0, 0.0):
        raise NSDFormatError(
            f"{path}: expected unscaled int16 betas (percent signal change x 300), "
            f"got {dtype} with scl_slope {slope}, scl_inter {inter}"
        )
    return BetasFile(path=path, fmt="nifti", shape=shape, dtype=dtype, data_offset=offset)


def _open_hdf5(path: Path) -> BetasFile:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            if "betas" not in h5:
                raise NSDFormatError(f"{path}: no dataset 'betas' (expected int16 (trial, Z, Y, X))")
            shape_tzyx, dtype = h5["betas"].shape, h5["betas"].dtype
    except OSError as err:
        raise NSDFormatError(f"{path}: cannot open as an HDF5 betas file ({err})") from err
    if len(shape_tzyx) != 4 or dtype != np.int16:
        raise NSDFormatError(f"{path}: expected dataset 'betas' int16 (trial, Z, Y, X), got {dtype} {shape_tzyx}")
    t, z, y, x = (int(n) for n in shape_tzyx)
    return BetasFile(path=path, fmt="hdf5", shape=(x, y, z, t), dtype=np.dtype(np.int16), data_offset=0)


def iter_masked_betas(betas: BetasFile, mask: Mask, chunk_trials: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first trial, int16 (trials, voxels)) for consecutive chunks of a session's trials.

    Peak memory is one chunk of whole volumes plus the masked chunk.
    """
    if betas.volume_shape != mask.shape:
        raise NSDFormatError(
            f"{mask.path}: mask shape {mask.shape} does not match the volume shape "
            f"{betas.volume_shape} of {betas.path}"
        )
    if chunk_trials < 1:
        raise ValueError(f"chunk_trials must be >= 1, got {chunk_trials}")
    offsets = mask.flat_offsets
    reader = _iter_nifti_volumes if betas.fmt == "nifti" else _iter_hdf5_volumes
    for start, volumes in reader(betas, chunk_trials):
        yield start, np.take(volumes, offsets, axis=1).astype(np.int16, copy=False)


def _iter_hdf5_volumes(betas: BetasFile, chunk_trials: int) -> Iterator[tuple[int, np.ndarray]]:
    import h5py

    try:
        with h5py.File(betas.path, "r") as h5:
            dataset = h5["betas"]
            for start in range(0, betas.n_trials, chunk_trials):
                stop = min(start + chunk_trials, betas.n_trials)
                yield start, dataset[start:stop].reshape(stop - start, -1)
    except OSError as err:
        raise NSDFormatError(f"{betas.path}: cannot read the betas ({err})") from err


def _iter_nifti_volumes(betas: BetasFile, chunk_trials: int) -> Iterator[tuple[int, np.ndarray]]:
    """Decompress the .nii.gz once, front to back, filling one reusable buffer of whole volumes."""
    volume_bytes = int(np.prod(betas.volume_shape)) * betas.dtype.itemsize
    chunk = bytearray(min(chunk_trials, betas.n_trials) * volume_bytes)
    filled, start = 0, 0
    for piece in _decompressed_range(betas.path, betas.data_offset, betas.n_trials * volume_bytes):
        while len(piece):
            take = min(len(piece), len(chunk) - filled)
            chunk[filled : filled + take] = piece[:take]
            piece, filled = piece[take:], filled + take
            if filled == len(chunk) or start + filled // volume_bytes == betas.n_trials:
                n = filled // volume_bytes
                yield start, np.frombuffer(
                    chunk, dtype=betas.dtype, count=n * volume_bytes // betas.dtype.itemsize
                ).reshape(n, -1)
                start, filled = start + n, 0


def _decompressed_range(path: Path, offset: int, length: int) -> Iterator[memoryview]:
    """Bytes offset..offset+length of a gzip file's content, in pieces, then check that the stream
    ends intact (the gzip CRC). Raises NSDFormatError on a damaged or short file."""
    position, wanted_end = 0, offset + length
    for data in _decompressed_pieces(path):
        begin, end = max(offset - position, 0), min(wanted_end - position, len(data))
        if begin < end:
            yield data[begin:end]
        position += len(data)
    if position < wanted_end:
        raise NSDFormatError(
            f"{path}: truncated: expected {length} bytes of betas after a {offset}-byte header, "
            f"the file holds {max(position - offset, 0)}"
        )


def _decompressed_pieces(path: Path) -> Iterator[memoryview]:
    """The whole decompressed content of a gzip file, front to back, in pieces of bounded size."""
    decompressor = zlib.decompressobj(wbits=31)
    try:
        with open(path, "rb") as handle:
            while block := handle.read(READ_BLOCK_BYTES):
                while block:
                    if decompressor.eof:  # a file of several gzip members: the next one begins
                        decompressor = zlib.decompressobj(wbits=31)
                    # bounded output: runs of zeros outside the brain expand a thousandfold
                    yield memoryview(decompressor.decompress(block, MAX_PIECE_BYTES))
                    block = decompressor.unconsumed_tail or decompressor.unused_data
        yield memoryview(decompressor.flush())
    except zlib.error as err:
        raise NSDFormatError(f"{path}: damaged gzip data ({err})") from err
    if not decompressor.eof:
        raise NSDFormatError(f"{path}: truncated: the gzip stream ends early")
