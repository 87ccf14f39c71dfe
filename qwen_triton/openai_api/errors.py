"""Errors in OpenAI's format, `{"error": {"message", "type", "param", "code"}}`, with the right status.

4xx for what the client sent (400 a bad field, named in `param`; 401 a bad API key; 404 an unknown model
or path; 413 a body too large), 503 when Triton or the engine cannot serve (down, restarting, full),
500 only for a fault of the server. Handlers turn FastAPI's and Starlette's own errors into this format.
"""
from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import InvalidRequestError

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
          404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_exceeded", 503: "server_error"}


class APIError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(param: str | None, message: str, code: str | None = None) -> APIError:
    return APIError(400, message, param, code or ("invalid_value" if param else None))


def from_invalid(exc: InvalidRequestError, param: str | None = None) -> APIError:
    """A library InvalidRequestError (its `field`) as a 400 naming the request's field `param`."""
    return bad_request(param or exc.field, str(exc))


_ROLE_TAGS = ("system", "developer", "user", "assistant", "tool")
_FORMAT_TAGS = ("text", "json_object", "json_schema")
_NOT_FIELDS = re.compile(r"^([A-Z][A-Za-z]*|str|int|float|bool|list|dict|.*\[.*)$")  # union members Pydantic names


def _loc_param(loc: tuple) -> str | None:
    """A Pydantic error location -> OpenAI's `param` ("messages[0].content"). What Pydantic adds to a
    location besides fields is left out: union members (str, list[...], a model's class name) and the tags
    of tagged unions (a message's role, a response_format's type)."""
    parts: list[str] = []
    items = list(loc[1:] if loc and loc[0] == "body" else loc)
    for i, item in enumerate(items):
        before = items[max(0, i - 2):i]
        role_tag = before[:1] == ["messages"] and len(before) == 2 and item in _ROLE_TAGS
        format_tag = before[-1:] == ["response_format"] and item in _FORMAT_TAGS
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif role_tag or format_tag or _NOT_FIELDS.match(str(item)):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or None


def validation_error(exc: RequestValidationError) -> APIError:
    """The first problem of a refused body, as a 400 naming the field."""
    errors = exc.errors()
    if not errors:
        return bad_request(None, "invalid request body")
    first = errors[0]
    param = _loc_param(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    if kind == "json_invalid":
        return bad_request(None, f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}".rstrip(": "),
                           "invalid_json")
    if kind == "extra_forbidden":
        return bad_request(param, f"unknown field {param!r}: this server (and OpenAI's API) has no such parameter",
                           "unknown_parameter")
    if kind == "missing" and param is None:
        return bad_request(None, "the request needs a JSON body")
    message = first.get("msg", "invalid value")
    return bad_request(param, f"invalid {param or 'body'}: {message}" + (f" ({len(errors)} problems in all)"
                                                                         if len(errors) > 1 else ""))


def install_handlers(app: FastAPI) -> None:
    """Every error the app answers, in OpenAI's format."""

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        status = 400 if exc.status_code == 422 else exc.status_code
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(status)
        response = APIError(status, str(exc.detail), None, code).response()
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s", request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}", None, "internal_error").response()
