"""Serving stage: TorchServe handlers (sample, interpolate), request schema, metrics, and the server launcher."""
