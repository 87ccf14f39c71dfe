"""An OpenAI-compatible API (FastAPI on uvicorn) in front of Triton.

It talks to Triton's engine model `tensorrt_llm` over gRPC streaming (one stream per request, token ids
in and out), so requests join the engine's inflight batch directly. Prompts are rendered and tokenized,
and replies detokenized, with the same chat layer the preprocessing model uses (`qwen_triton.chat`),
for the checkpoint that the model repository names.

Modules: `app` (create_app, middlewares), `config` (ServiceConfig, the served model), `protocol` and
`responses` (the API's bodies), `chat` and `completions` (the handlers), `sampling` (request fields ->
engine call), `generation` (detokenizing, stop strings), `engine_client` (the gRPC stream), `streaming`
(SSE, disconnects), `errors` (OpenAI's error format), `cli` (python -m qwen_triton.openai_api).
"""
from .app import create_app
from .config import ServedModel, ServiceConfig, load_served_model

__all__ = ["ServedModel", "ServiceConfig", "create_app", "load_served_model"]
