"""Mind Reader: reconstructing complex images from brain activity (Lin, Sprague & Singh, 2022).

The library behind the Snakemake workflow. Each stage is a module with a small public surface:
``nsd`` (reading the Natural Scenes Dataset), ``synth`` (a synthetic NSD in the same layout),
``prepare`` (subject preparation), ``clip``, ``mappers``, ``generator``, ``metrics``.
"""

__version__ = "0.1.0"
