"""Everything a TorchServe worker imports besides ``handlers/``, and what the host side shares with it: the export
manifest (``manifest``), artifact names and latent statistics (``artifacts``), the runtimes that run the artifacts
(``backends``), latent math (``latent``), image encoding (``images``) and the one error shape (``errors``).

Import rule (tests/test_layout.py): this package imports nothing else of the project; ``handlers/`` imports only
itself and this package; everything else may import it.
"""
