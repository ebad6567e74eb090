"""The fmvae service's Python client: ``from fmvae_client import Client``; ``python -m fmvae_client`` for people."""

from fmvae_client.client import AsyncClient, Client, Keys, Response, fetch, read_key_file, request
from fmvae_client.errors import APIError, ClientError, TransportError

__all__ = ["APIError", "AsyncClient", "Client", "ClientError", "Keys", "Response", "TransportError", "fetch",
           "read_key_file", "request"]
