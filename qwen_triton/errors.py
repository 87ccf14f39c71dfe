"""Typed errors raised at the library's seams.

Request errors concern one request only: the engine rejects that request and
keeps serving every other one. Checkpoint errors are raised at load time.
"""
from __future__ import annotations


class QwenTritonError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidRequestError(QwenTritonError, ValueError):
    """A request's prompt or sampling settings are invalid.

    `field` names the offending input (e.g. "temperature", "prompt") so that
    servers can map it onto their own error reporting.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"invalid {field}: {message}")
        self.field = field


class DuplicateRequestError(InvalidRequestError):
    """A request id that is already running was submitted again."""

    def __init__(self, request_id: str):
        super().__init__("request_id", f"request {request_id!r} is already in the engine")


class CheckpointError(QwenTritonError):
    """A checkpoint folder is missing, malformed or inconsistent."""


class UnsupportedModelError(CheckpointError):
    """The checkpoint's model_type (or a feature of it) is not implemented."""


class EngineDeadError(QwenTritonError):
    """The background engine loop has stopped and accepts no more requests."""
