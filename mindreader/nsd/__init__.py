"""The Natural Scenes Dataset in its real layout (../shared/docs/nsd-format.md).

- ``paths``: every path of the layout, relative to the NSD root (no heavy imports: rules use it)
- ``betas``: the nsdgeneral mask and the betas streamed through it, session by session
- ``reader``: ``NSD``, the design, each subject's trials, the stimuli and their captions
- ``write``: writers of the same layout (the synthetic NSD and the tests' tiny trees)
"""

from mindreader.nsd.betas import (
    BetasFile,
    Mask,
    NSDFormatError,
    NSDMissingFileError,
    iter_masked_betas,
    open_betas,
    read_mask,
    require_file,
)
from mindreader.nsd.paths import (
    BETAS_FORMATS,
    CAPTION_SPLITS,
    EXPDESIGN_RELPATH,
    STIM_INFO_RELPATH,
    STIMULI_RELPATH,
    betas_relpath,
    captions_relpath,
    mask_relpath,
    present_betas_format,
    subject_name,
    subject_number,
)
from mindreader.nsd.reader import NSD, Design

__all__ = [
    "BETAS_FORMATS",
    "CAPTION_SPLITS",
    "EXPDESIGN_RELPATH",
    "NSD",
    "STIMULI_RELPATH",
    "STIM_INFO_RELPATH",
    "BetasFile",
    "Design",
    "Mask",
    "NSDFormatError",
    "NSDMissingFileError",
    "betas_relpath",
    "captions_relpath",
    "iter_masked_betas",
    "mask_relpath",
    "open_betas",
    "present_betas_format",
    "read_mask",
    "require_file",
    "subject_name",
    "subject_number",
]
