"""Everything a TorchServe worker imports besides ``handlers/``: the exported model's artifact names and
manifest (``artifacts``), the runtimes that run them (``backends``), latent math (``latent``) and image encoding
(``images``).

Import rule (tests/test_layout.py): this package imports nothing else of the project; ``handlers/`` imports
only itself and this package; training, export and the benchmarks may import it.
"""
