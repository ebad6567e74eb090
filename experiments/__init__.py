"""The documents' experiments: beta, latent-size and KL warm-up sweeps (``python -m experiments``)."""
