"""``python -m qwen_triton.openai_api``: serve the OpenAI-compatible API in front of a running Triton::

    python -m qwen_triton.openai_api --triton-grpc 127.0.0.1:8001 --port 9000 --model-repository model_repo
        [--host 127.0.0.1] [--api-key KEY] [--cors-origin https://app.example ...] [--served-model-name NAME]
        [--max-body-bytes 8388608] [--request-timeout 600]

The API key comes from ``--api-key``, else the environment's ``QWEN_TRITON_API_KEY`` (better: it stays off
the process list); without one the API is open, so the default address is 127.0.0.1. Triton may start
later: until its engine model is ready, requests get 503 and ``GET /health`` says why.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import CheckpointError
from .config import API_KEY_ENV, DEFAULT_PORT, ServiceConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qwen_triton.openai_api",
                                description="OpenAI-compatible API (chat completions, completions, models) in "
                                            "front of Triton's engine model, over gRPC streaming.")
    p.add_argument("--triton-grpc", default=f"127.0.0.1:{os.environ.get('TRITON_GRPC_PORT', '8001')}",
                   help="Triton's gRPC address (host:port)")
    p.add_argument("--model-repository", type=Path, default=Path(os.environ.get("TRITON_MODEL_REPO", "model_repo")),
                   help="the model repository Triton serves: it names the checkpoint (tokenizer, chat template)")
    p.add_argument("--host", default=os.environ.get("OPENAI_HOST", "127.0.0.1"),
                   help="address to listen on (0.0.0.0 serves other machines: set an API key)")
    p.add_argument("--port", type=int, default=int(os.environ.get("OPENAI_PORT", DEFAULT_PORT)))
    p.add_argument("--api-key", default=None, help=f"require `Authorization: Bearer KEY` (default: ${API_KEY_ENV})")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browsers on this origin (repeatable; '*' for any); off by default")
    p.add_argument("--served-model-name", default=None,
                   help="the model's name in the API (default: the checkpoint's name)")
    p.add_argument("--max-body-bytes", type=int, default=8 << 20)
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds one request may take")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def config_from_args(args: argparse.Namespace) -> ServiceConfig:
    return ServiceConfig(triton_grpc=args.triton_grpc, model_repository=args.model_repository, host=args.host,
                         port=args.port, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                         cors_origins=tuple(args.cors_origin), max_body_bytes=args.max_body_bytes,
                         served_model_name=args.served_model_name, request_timeout_s=args.request_timeout)


def main(argv: list[str] | None = None) -> int:
    """Run the service until SIGINT/SIGTERM; returns the exit code."""
    import uvicorn

    from .app import create_app

    args = parser().parse_args(argv)
    config = config_from_args(args)
    try:
        app = create_app(config)
    except CheckpointError as exc:
        print(f"[openai-api] ERROR: {exc}", file=sys.stderr)
        return 1
    if not config.api_key and config.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"[openai-api] WARNING: listening on {config.host} without an API key: anyone who reaches this "
              f"port can use the model (set {API_KEY_ENV})", file=sys.stderr)
    print(f"[openai-api] serving {app_model_name(app)} on http://{config.host}:{config.port}/v1 "
          f"(Triton gRPC {config.triton_grpc}; API key {'required' if config.api_key else 'off'})", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def app_model_name(app) -> str:
    """The served model's name, through the middlewares around the FastAPI app."""
    while not hasattr(app, "state"):
        app = app.app
    return app.state.service.model.name
