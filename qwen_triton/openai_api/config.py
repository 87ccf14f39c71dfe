"""What the service is told (`ServiceConfig`) and what it reads from the model repository (`ServedModel`).

The model repository names the checkpoint the same way it does for Triton's own models: the
`preprocessing` model's config.pbtxt carries `tokenizer_dir` (relative to the repository's root or
absolute), the default system prompt and the prompt/reply limits; the engine model's carries its
`engine_config` (the context length) and whether it is decoupled (streams). The tokenizer, chat template
and special tokens come from `qwen_triton.serving.preprocess.Preprocessor.from_parameters`, the loader
the preprocessing model itself uses, so the service renders and tokenizes prompts exactly as the
served pipeline does.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..chat import Tokenizer
from ..errors import CheckpointError
from ..serving import contract as c

DEFAULT_PORT = 9000
API_KEY_ENV = "QWEN_TRITON_API_KEY"


@dataclass(frozen=True)
class ServiceConfig:
    """How the service runs. `api_key`: None serves without one; `cors_origins`: () sends no CORS
    headers (browsers on other origins are refused); bodies over `max_body_bytes` get 413."""

    triton_grpc: str = "127.0.0.1:8001"
    model_repository: Path = Path("model_repo")
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 8 << 20
    served_model_name: str | None = None
    engine_model: str = c.ENGINE
    request_timeout_s: float = 600.0


@dataclass(frozen=True)
class ServedModel:
    """The one model the service serves: its name, tokenizer and limits (None: no limit)."""

    name: str
    tokenizer: Tokenizer
    default_system: str
    max_input_len: int | None
    max_output_len: int | None
    max_model_len: int | None
    decoupled: bool
    created: int

    def reply_room(self, prompt_len: int) -> int:
        """The most tokens a reply to a prompt of `prompt_len` tokens may have (0: none fits)."""
        room = [n for n in (self.max_output_len,) if n is not None]
        if self.max_model_len is not None:
            room.append(self.max_model_len - prompt_len)
        return max(0, min(room)) if room else 1 << 30


def read_model_config(path: Path):
    """One config.pbtxt as tritonclient's ModelConfig protobuf (CheckpointError naming the file)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise CheckpointError(f"{path}: cannot read the model's config ({exc}); build the repository "
                              "first (make build-engine)") from None


def _parameters(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def _checkpoint_name(tokenizer_dir: Path) -> str:
    """A GGUF import's source file name without `.gguf`, else the checkpoint folder's name."""
    try:
        source = json.loads((tokenizer_dir / "gguf_manifest.json").read_text(encoding="utf-8"))["source"]
        return str(source).removesuffix(".gguf")
    except (OSError, ValueError, KeyError, TypeError):
        return tokenizer_dir.name


def _max_model_len(engine_params: dict[str, str]) -> int | None:
    try:
        value = json.loads(engine_params.get(c.PARAM_ENGINE_CONFIG) or "{}").get("max_model_len")
    except (ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


def load_served_model(config: ServiceConfig) -> ServedModel:
    """Read the repository's preprocessing and engine configs and load the checkpoint's tokenizer."""
    from ..serving.preprocess import Preprocessor

    repo = Path(config.model_repository).absolute()
    pre_params = _parameters(read_model_config(repo / c.PREPROCESSING / "config.pbtxt"))
    engine = read_model_config(repo / config.engine_model / "config.pbtxt")

    def resolve(value: str) -> str:  # as the models resolve path parameters (serving/triton_io.resolve_path)
        return value if os.path.isabs(value) else os.path.normpath(repo / value)

    if c.PARAM_TOKENIZER_DIR not in pre_params:
        raise CheckpointError(f"{repo / c.PREPROCESSING / 'config.pbtxt'} has no {c.PARAM_TOKENIZER_DIR} parameter")
    pre = Preprocessor.from_parameters(pre_params, resolve)
    tokenizer_dir = Path(resolve(pre_params[c.PARAM_TOKENIZER_DIR]))
    return ServedModel(
        name=config.served_model_name or _checkpoint_name(tokenizer_dir), tokenizer=pre.tokenizer,
        default_system=pre.default_system, max_input_len=pre.max_input_len, max_output_len=pre.max_output_len,
        max_model_len=_max_model_len(_parameters(engine)),
        decoupled=engine.model_transaction_policy.decoupled, created=int(time.time()))
