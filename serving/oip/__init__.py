"""The Open Inference Protocol (v2) on the hosts' fronts: the routes' tensors (``tensors.py``), over REST with JSON
and binary tensors (``rest.py``) and over gRPC (``grpc_service.py``); every v2 request becomes the route's own
request and goes through the route's queue."""

# The loopback port of the v2 gRPC service that every serving process of a host shares (SO_REUSEPORT); unset or 0:
# off. Read from the launcher's environment until the host's config has a field for it (here, not in
# grpc_service.py: a process that reads it need not load the protocol's messages).
GRPC_PORT_ENV = "FMVAE_KSERVE_GRPC_PORT"
