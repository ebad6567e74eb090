"""Serving stage: TorchServe handlers (sample, interpolate), their settings, request schema, metrics, the
archive builder and the server launcher. Workers import only this package and ``runtime``."""
