"""Deployment: the serving image built and checked with buildah (``python -m deploy.image``), the compose stack,
the Kubernetes manifests and the image's Python requirements."""
