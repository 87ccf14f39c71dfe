"""The ASGI app: `create_app(ServiceConfig)` -> FastAPI, its routes, limits and error format.

Routes: GET /v1/models, /v1/models/{model}; POST /v1/chat/completions, /v1/completions; GET /health
(200 when Triton's engine model is ready, else 503). The OpenAPI document is /openapi.json.
Middlewares (pure ASGI, so that streamed replies pass untouched): the body limit (413), the API key
(401; /health and the OpenAPI document stay open), and CORS only when origins are given.
"""
from __future__ import annotations

import contextlib
import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from .app_state import ServiceState
from .chat import chat_completion
from .completions import completion
from .config import ServedModel, ServiceConfig, load_served_model
from .engine_client import EngineClient
from .errors import APIError, install_handlers
from .protocol import ChatCompletionRequest, CompletionRequest
from .responses import ERROR_RESPONSES, ChatCompletion, ChatCompletionChunk, Completion, Model, ModelList

_OPEN_PATHS = ("/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
_SSE = {"text/event-stream": {"schema": {"type": "string", "description": "data: <chunk JSON> events, then "
                                                                          "data: [DONE]"}}}


class BodyLimit:
    """413 for a body over `limit` bytes, by its Content-Length or as it streams in. The body is read here
    (the handlers read all of it anyway) and handed on whole."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = APIError(413, f"the request body is over {self.limit} bytes", None, "request_too_large")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await too_large.response()(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await too_large.response()(scope, receive, send)
            if not message.get("more_body", False):
                break
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


class ApiKey:
    """401 unless `Authorization: Bearer <key>` (compared in constant time); some paths stay open."""

    def __init__(self, app: Any, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in _OPEN_PATHS and scope["method"] != "OPTIONS":
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                error = APIError(401, "invalid API key: send `Authorization: Bearer <key>` with the key this "
                                      "server was started with", None, "invalid_api_key")
                response = error.response()
                response.headers["WWW-Authenticate"] = "Bearer"
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _routes(app: FastAPI, state: ServiceState) -> None:
    model = state.model

    def model_card() -> Model:
        return Model(id=model.name, created=model.created, owned_by="qwen-triton")

    @app.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
    async def list_models() -> ModelList:
        return ModelList(data=[model_card()])

    @app.get("/v1/models/{model_id:path}", response_model=Model, responses=ERROR_RESPONSES)
    async def get_model(model_id: str) -> Model:
        if model_id != model.name:
            raise APIError(404, f"the model {model_id!r} does not exist", "model", "model_not_found")
        return model_card()

    @app.post("/v1/chat/completions", response_model=ChatCompletion,
              responses={**ERROR_RESPONSES, 200: {"content": _SSE, "model": ChatCompletionChunk}})
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await chat_completion(request, body, state)

    @app.post("/v1/completions", response_model=Completion, responses={**ERROR_RESPONSES, 200: {"content": _SSE}})
    async def completions(body: CompletionRequest, request: Request):
        return await completion(request, body, state)

    @app.get("/health", responses={503: ERROR_RESPONSES[503]})
    async def health() -> JSONResponse:
        if await state.engine.ready():
            return JSONResponse({"status": "ok", "model": model.name})
        raise APIError(503, f"unavailable: the engine model {state.engine.model!r} at gRPC {state.engine.url} "
                            "is not ready", None, "engine_unavailable")


def create_app(config: ServiceConfig, model: ServedModel | None = None) -> Any:
    """The service's ASGI app. `model`: the served model if already loaded, else read from
    config.model_repository. The gRPC client connects lazily and closes with the app (its lifespan)."""
    model = model or load_served_model(config)
    engine = EngineClient(config.triton_grpc, config.engine_model, config.request_timeout_s)
    state = ServiceState(config, model, engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await engine.close()

    app = FastAPI(title="qwen-triton OpenAI-compatible API", version="1", lifespan=lifespan,
                  description=f"Serves {model.name} from Triton (gRPC {config.triton_grpc}) with OpenAI's API.")
    app.state.service = state
    install_handlers(app)
    _routes(app, state)
    asgi: Any = BodyLimit(app, config.max_body_bytes)
    if config.api_key:
        asgi = ApiKey(asgi, config.api_key)
    if config.cors_origins:  # outermost: a browser can read the 401 / 413 too
        asgi = CORSMiddleware(asgi, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
                              allow_headers=["Authorization", "Content-Type"])
    return asgi
