"""The public HTTP entry: Triton's KServe v2 HTTP API, checked before Triton sees a request.

Triton 2.51's own HTTP front end parses JSON it should refuse: a body nested 200,000 deep kills
tritonserver (SIGSEGV), integers that do not fit the input's type wrap silently (`max_tokens`
4294967304 runs as 8), `stream: true` on /generate answers 200 with an error body. So the public port
is served here, and Triton's HTTP listens on 127.0.0.1 only. Every request body is bounded in size
and nesting; /generate and /generate_stream bodies are checked field by field against the model's
own inputs (name, type, range, shape) and refused with a 400 that names the field. What passes goes
to Triton unchanged, responses and SSE streams come back unchanged, and a client that goes away closes
the upstream connection, which Triton treats as a cancellation. Readiness answers 503 while the
supervisor knows the engine is down (`ready` below); the model repository API stays private. Triton
2.51 never answers a request whose model's process died under it: such a request (/generate,
/generate_stream, /infer) gets a 503, or an error event mid-stream, once the supervisor has seen the
death (`deaths` below) instead of waiting forever.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .front_checks import BodyError, check_generate_body, fault_status, parse_json_body

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade",
                "proxy-connection", "te", "trailer", "content-encoding"}


@dataclass(frozen=True)
class FrontConfig:
    """triton_url: Triton's own HTTP (internal). ready(): None when serving, else why not (503)."""

    triton_url: str
    max_body_bytes: int = 8 << 20
    max_json_depth: int = 64
    expose_repository_api: bool = False
    max_header_bytes: int = 16 << 10
    timeout_s: float = 600.0
    ready: Callable[[], str | None] = lambda: None
    # how many times a model's process has died (the supervisor counts): a request under way when the
    # count moves is answered 503 (checked every death_poll_s)
    deaths: Callable[[str], int] = lambda model: 0
    death_poll_s: float = 0.5


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Front:
    """The ASGI app and the state it keeps: one HTTP client to Triton, the models' input specs."""

    def __init__(self, config: FrontConfig):
        self.config = config
        self.client = httpx.AsyncClient(base_url=config.triton_url, timeout=httpx.Timeout(config.timeout_s),
                                        limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256))
        self._inputs: dict[str, dict[str, dict]] = {}  # model -> its config's inputs by name
        routes = [
            Route("/v2/health/ready", self.ready, methods=["GET"]),
            Route("/v2/models/{model}/generate", self.generate, methods=["POST"]),
            Route("/v2/models/{model}/versions/{version}/generate", self.generate, methods=["POST"]),
            Route("/v2/models/{model}/generate_stream", self.generate, methods=["POST"]),
            Route("/v2/models/{model}/versions/{version}/generate_stream", self.generate, methods=["POST"]),
            Route("/{path:path}", self.proxy, methods=["GET", "POST", "HEAD"]),
        ]
        self.app = Starlette(routes=routes, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        yield
        await self.client.aclose()

    # -- routes ------------------------------------------------------------------------------------------

    async def ready(self, request: Request) -> Response:
        reason = self.config.ready()
        if reason is not None:
            return _error(503, reason)
        return await self.proxy(request)

    async def generate(self, request: Request) -> Response:
        streaming = request.url.path.endswith("_stream")
        try:
            body = parse_json_body(await self._read(request), self.config.max_json_depth)
            inputs = await self._model_inputs(request.path_params["model"])
            if inputs is not None:
                check_generate_body(body, inputs, streaming)
        except BodyError as exc:
            return _error(exc.status, str(exc))
        except ClientDisconnect:
            return Response(status_code=499)
        content = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()
        return await self._forward(request, content, stream=streaming, model=request.path_params["model"])

    async def proxy(self, request: Request) -> Response:
        path = request.url.path
        if path.startswith("/v2/repository") and not self.config.expose_repository_api:
            return _error(403, "the model repository API is not served on this port")
        try:
            content = await self._read(request)
            if content and "json" in request.headers.get("content-type", "json") \
                    and "inference-header-content-length" not in request.headers:
                parse_json_body(content, self.config.max_json_depth)  # bounded before Triton parses it
        except BodyError as exc:
            return _error(exc.status, str(exc))
        except ClientDisconnect:
            return Response(status_code=499)
        infer = _INFER_PATH.match(path)
        return await self._forward(request, content, stream=False, model=infer and infer.group(1))

    # -- helpers -----------------------------------------------------------------------------------------

    async def _read(self, request: Request) -> bytes:
        """The body, refused past max_body_bytes before it is all in memory."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyError(413, f"the request body is {declared} bytes; at most {limit} are accepted")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyError(413, f"the request body is over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _model_inputs(self, model: str) -> dict[str, dict] | None:
        """The model's inputs from its config (cached); None when Triton does not know the model (it answers)."""
        if model not in self._inputs:
            r = await self.client.get(f"/v2/models/{model}/config")
            if r.status_code != 200:
                return None
            self._inputs[model] = {t["name"]: t for t in r.json().get("input", [])}
        return self._inputs[model]

    def _headers(self, request: Request) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}

    async def _forward(self, request: Request, content: bytes, stream: bool, model: str | None = None) -> Response:
        watch = _DeathWatch(self.config, model)
        upstream = self.client.build_request(request.method, request.url.path, params=request.query_params,
                                             headers=self._headers(request), content=content)
        try:
            response = await watch.run(self.client.send(upstream, stream=True))
        except _ModelDied as exc:
            return _error(503, str(exc))
        except httpx.HTTPError as exc:
            return _error(503, f"Triton is not reachable: {type(exc).__name__}")
        headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}
        chunks = response.aiter_bytes()
        try:
            first = await watch.run(response.aread() if not stream else anext(chunks, b""))
        except _ModelDied as exc:
            await response.aclose()
            return _error(503, str(exc))
        except httpx.HTTPError as exc:
            await response.aclose()
            return _error(503, f"unavailable: Triton closed the connection ({type(exc).__name__})")
        if not stream:
            await response.aclose()
            return Response(first, status_code=fault_status(response.status_code, first), headers=headers)
        # Triton sends a stream's status with its first event: it was read first
        return StreamingResponse(_relay(first, chunks, response, watch), headers=headers,
                                 status_code=fault_status(response.status_code, first))


_INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?/infer$")


class _ModelDied(Exception):
    pass


class _DeathWatch:
    """Awaits what a request waits on from Triton, unless its model's process dies meanwhile
    (FrontConfig.deaths moved since the request came): then raises _ModelDied."""

    def __init__(self, config: FrontConfig, model: str | None):
        self.config, self.model = config, model
        self.seen = config.deaths(model) if model else 0
        self.died = False

    def _moved(self) -> bool:
        return self.config.deaths(self.model) != self.seen

    def message(self) -> str:
        return (f"unavailable: the {self.model} model's process died while serving this request; it is being "
                "restarted, try again shortly")

    async def run(self, awaitable):
        """Once a request (the upstream's response head, its first event): a task and a polling wait."""
        if not self.model:
            return await awaitable
        task = asyncio.ensure_future(awaitable)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.config.death_poll_s)
                if done:
                    return task.result()
                if self._moved():
                    raise _ModelDied(self.message())
        finally:
            if not task.done():
                task.cancel()

    async def cancel_on_death(self, task: asyncio.Task) -> None:
        """For a whole stream, one poller: cancels `task` (the relay) when the model's process dies, with
        self.died set so the relay tells a death from its client leaving. Per chunk, the relay then pays
        nothing for the watch (it used to make a task and a timed wait for every event)."""
        while not self._moved():
            await asyncio.sleep(self.config.death_poll_s)
        self.died = True
        task.cancel()


async def _relay(first: bytes, chunks, response: httpx.Response, watch: _DeathWatch):
    """Triton's SSE bytes as they come; closing early (the client left) closes Triton's stream too. When
    Triton goes away mid-stream (it is stopping), or the model's process dies, the stream ends with an
    error event."""
    relay = asyncio.current_task()
    poller = asyncio.ensure_future(watch.cancel_on_death(relay)) if watch.model else None
    try:
        if first:
            yield first
        async for chunk in chunks:
            yield chunk
    except asyncio.CancelledError:
        if not watch.died:
            raise  # the client left
        relay.uncancel()
        yield f"data: {json.dumps({'error': watch.message()})}\n\n".encode()
    except httpx.HTTPError as exc:
        yield f'data: {{"error": "unavailable: the server closed the stream ({type(exc).__name__})"}}\n\n'.encode()
    finally:
        if poller is not None:
            poller.cancel()
        await response.aclose()


class _HeaderLimit:
    """ASGI middleware: a request whose headers add up to more than `limit` bytes gets 431 (Triton's own
    HTTP server resets the connection instead)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > self.limit:
            response = _error(431, f"the request headers are over {self.limit} bytes")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(config: FrontConfig) -> Any:
    """The ASGI app of the public HTTP port."""
    return _HeaderLimit(Front(config).app, config.max_header_bytes)
