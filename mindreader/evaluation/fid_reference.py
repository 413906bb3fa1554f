"""pytorch-fid's own Frechet distance, runnable on any SciPy: the baseline that the tests and
bench/metrics.py compare `mindreader.metrics.frechet_distance` with.

pytorch-fid 0.3.0 calls `scipy.linalg.sqrtm(..., disp=False)` and unpacks two values; SciPy
deprecated `disp` in 1.16 and removes it in 1.18. The shim below gives pytorch-fid that old
call while it runs, and nothing else changes.
"""

from __future__ import annotations

import unittest.mock
import warnings

import numpy as np
import scipy.linalg


# pytorch-fid reaches sqrtm as scipy.linalg.sqrtm, the attribute the shim replaces: keep the original.
_SQRTM = scipy.linalg.sqrtm


def _sqrtm_with_disp(matrix: np.ndarray, disp: bool = True, **kwargs):
    root = _SQRTM(matrix, **kwargs)
    if disp:
        return root
    # the old disp=False contract: (root, estimated error); pytorch-fid ignores the error
    return root, float(np.linalg.norm(root @ root - matrix, "fro") / np.linalg.norm(matrix, "fro"))


def pytorch_fid_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """`pytorch_fid.fid_score.calculate_frechet_distance`, with the disp shim."""
    from pytorch_fid import fid_score

    with warnings.catch_warnings(), unittest.mock.patch.object(fid_score.linalg, "sqrtm", _sqrtm_with_disp):
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2))
