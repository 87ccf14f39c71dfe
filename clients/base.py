"""What both transports share: where they connect by default and the errors they raise."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from qwen_triton import wire

# Where the clients connect by default: Triton's default ports on this machine.
DEFAULT_URLS: Mapping[str, str] = MappingProxyType({kind: f"localhost:{wire.DEFAULT_PORTS[kind]}"
                                                    for kind in ("http", "grpc")})


class ClientError(Exception):
    """The request could not be made or its answer could not be read (server unreachable, bad reply)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ServerError(ClientError):
    """Triton answered with an error; ``message`` is the server's text, verbatim.

    ``status`` is the HTTP status (HTTP) or the gRPC status name (gRPC) where known."""

    def __init__(self, message: str, status: int | str | None = None):
        super().__init__(message)
        self.status = status

    def __str__(self) -> str:
        return self.message
