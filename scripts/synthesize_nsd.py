"""Rule synthesize_nsd: write the synthetic NSD at nsd_root; its marker is written last."""

from pathlib import Path

from mindreader.provenance import write_provenance
from mindreader.runtime import setup_logging
from mindreader.synth import SyntheticSpec, write_synthetic_nsd

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)
config = snakemake.config  # noqa: F821
spec = SyntheticSpec.from_config(config["synthetic"])
root = Path(snakemake.output.marker).parent  # noqa: F821
write_synthetic_nsd(root, spec, list(config["subjects"]))
write_provenance(root / "synthetic", config, spec.seed)
