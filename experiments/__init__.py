"""The documents' experiments: beta, latent-size, KL warm-up and lever sweeps (``python -m experiments``)."""
