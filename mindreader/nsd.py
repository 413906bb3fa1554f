"""Reading the Natural Scenes Dataset in its real layout (../shared/docs/nsd-format.md).

The paths of the layout live in `mindreader.nsd_paths` and are re-exported here.
"""

from __future__ import annotations

from mindreader.nsd_paths import (  # noqa: F401  (the public path API of the NSD layout)
    BETAS_FORMATS,
    CAPTION_SPLITS,
    EXPDESIGN_RELPATH,
    STIM_INFO_RELPATH,
    STIMULI_RELPATH,
    betas_relpath,
    captions_relpath,
    mask_relpath,
    subject_name,
    subject_number,
)
