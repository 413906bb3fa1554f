"""A synthetic NSD in the real layout: scenes, captions, simulated brains and NSD's design files.

`write_synthetic_nsd(root, SyntheticSpec.from_config(config["synthetic"]), subjects)` writes the
tree; `scene_features` gives the high-level features the simulated voxels respond to.
"""

from mindreader.synth.brain import scene_features
from mindreader.synth.scenes import Scene, draw_scene
from mindreader.synth.world import MARKER_NAME, SCENES_RELPATH, SyntheticSpec, write_synthetic_nsd

__all__ = ["MARKER_NAME", "SCENES_RELPATH", "Scene", "SyntheticSpec", "draw_scene", "scene_features", "write_synthetic_nsd"]
