"""Command-line client of the qwen-triton ensemble.

    python -m clients.cli --url localhost:8000 --protocol http --text "Hello" --max-tokens 32
    python -m clients.cli --url localhost:8001 --protocol grpc --stream \\
        --messages-json '[{"role": "user", "content": "Tell me a joke"}]' --temperature 0.7 --top-p 0.9
    python -m clients.cli --prompt-file prompt.txt --stop "\\n\\n" --seed 7
    python -m clients.cli --api openai --base-url http://127.0.0.1:9000/v1 --stream --messages-json '[...]'

It talks to Triton (``--api triton``, the default: the ensemble over HTTP or gRPC) or to the
OpenAI-compatible API that ``make serve`` starts beside it (``--api openai``: chat messages to
/v1/chat/completions, ``--text`` to /v1/completions, with the ``openai`` SDK; ``--base-url`` and ``--api-key``
default to $OPENAI_BASE_URL and $OPENAI_API_KEY, else $QWEN_TRITON_API_KEY).

Prints the reply (as it arrives with --stream) followed by a newline; with --timing, the time to the first
chunk and the latency go to stderr.  On an error it prints the server's message to stderr and exits 1
(2 for bad arguments).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .openai_transport import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    SERVICE_KEY_ENV,
    OpenAIClient,
    default_api_key,
    default_base_url,
    openai_params,
)
from .triton_client import DEFAULT_URLS, ClientError, GenerateRequest, RequestStats, make_client


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", choices=("triton", "openai"), default="triton",
                   help="Triton's own API (default) or the OpenAI-compatible API (make serve's OPENAI_PORT)")
    p.add_argument("--url", help="Triton's address, host:port (default localhost:8000 for http, 8001 for grpc)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http", help="Triton's protocol")
    p.add_argument("--base-url", help=f"the OpenAI API's base URL (default ${BASE_URL_ENV}, else {DEFAULT_BASE_URL})")
    p.add_argument("--api-key", help=f"the OpenAI API's key (default ${API_KEY_ENV}, else ${SERVICE_KEY_ENV}; "
                                     "none needed while the API has none)")
    p.add_argument("--model", default=None,
                   help="model to call (default: the ensemble; with --api openai, the first the API lists)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before giving up on a request")


def check_connection_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (argparse's exit 2) flags the chosen API does not have."""
    if args.api == "openai":
        if args.url is not None or args.protocol != "http":
            p.error("--url and --protocol are Triton's: with --api openai, give --base-url")
        try:
            openai_params(GenerateRequest(text="", **sampling_fields(args)))
        except ClientError as exc:
            p.error(exc.message)
    elif args.base_url is not None or args.api_key is not None:
        p.error("--base-url and --api-key are the OpenAI API's: add --api openai")


def describe(args: argparse.Namespace) -> str:
    """Where `connect(args)` sends requests, for people."""
    if args.api == "openai":
        return f"the OpenAI API at {args.base_url or default_base_url()}"
    return f"{args.url or DEFAULT_URLS[args.protocol]} over {args.protocol}"


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, help="0 is greedy")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int, help="sent as random_seed")
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--presence-penalty", type=float)
    p.add_argument("--frequency-penalty", type=float)
    p.add_argument("--min-tokens", type=int, help="sent as min_length")
    p.add_argument("--stop", action="append", default=[], metavar="WORD",
                   help="stop word (repeatable); backslash escapes such as \\n are understood")
    p.add_argument("--bad-word", action="append", default=[], metavar="WORD", help="bad word (repeatable)")


def connect(args: argparse.Namespace):
    """The client `args` name: Triton's (HTTP or gRPC) or the OpenAI API's."""
    if args.api == "openai":
        return OpenAIClient(args.base_url or default_base_url(), api_key=args.api_key or default_api_key(),
                            model=args.model, timeout=args.timeout)
    url = args.url or DEFAULT_URLS[args.protocol]
    kwargs = {"timeout": args.timeout}
    if args.model:
        kwargs["model"] = args.model
    return make_client(url, args.protocol, **kwargs)


def _unescape(word: str) -> str:
    try:
        return word.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        return word


def sampling_fields(args: argparse.Namespace) -> dict:
    return {
        "max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
        "top_k": args.top_k, "seed": args.seed, "repetition_penalty": args.repetition_penalty,
        "presence_penalty": args.presence_penalty, "frequency_penalty": args.frequency_penalty,
        "min_tokens": args.min_tokens, "stop": [_unescape(w) for w in args.stop],
        "bad_words": [_unescape(w) for w in args.bad_word],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clients.cli", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_connection_args(p)
    p.add_argument("--stream", action="store_true", help="print the reply as it arrives")
    add_sampling_args(p)
    p.add_argument("--timing", action="store_true", help="print time to first chunk and latency to stderr")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="prompt text (sent as text_input, tokenized as given)")
    src.add_argument("--messages-json", help='chat messages: \'[{"role": "user", "content": "..."}]\'')
    src.add_argument("--prompt-file", type=Path, help="file holding the prompt text ('-': stdin)")
    args = p.parse_args(argv)
    check_connection_args(p, args)
    if args.messages_json is not None:
        try:
            messages = json.loads(args.messages_json)
        except ValueError as exc:
            p.error(f"--messages-json is not JSON: {exc}")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            p.error("--messages-json must be a JSON list of {\"role\": ..., \"content\": ...} objects")
        args.messages = messages
    else:
        args.messages = None
    if args.prompt_file is not None:
        try:
            args.text = sys.stdin.read() if str(args.prompt_file) == "-" else args.prompt_file.read_text("utf-8")
        except OSError as exc:
            p.error(f"cannot read --prompt-file: {exc}")
    return args


def print_timing(stats: RequestStats) -> None:
    first = f"{stats.first_chunk_s * 1000:.1f} ms" if stats.first_chunk_s is not None else "-"
    total = f"{stats.latency_s * 1000:.1f} ms" if stats.latency_s is not None else "-"
    print(f"[time to first chunk {first}, latency {total}, {stats.chunks} chunk(s)]", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        req = GenerateRequest(text=args.text, messages=args.messages, stream=args.stream, **sampling_fields(args))
    except (TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout
    if hasattr(out, "reconfigure"):
        out.reconfigure(errors="replace")  # a reply must never crash on a terminal's encoding
    printed = False
    try:
        client = connect(args)
        if args.stream:
            stream = client.stream(req)
            try:
                for chunk in stream:
                    out.write(chunk)
                    out.flush()
                    printed = True
            except KeyboardInterrupt:
                stream.cancel()
                out.write("\n")
                print("[cancelled]", file=sys.stderr)
                return 130
            finally:
                stream.close()
            stats = stream.stats
        else:
            result = client.generate(req)
            out.write(result.text)
            stats = result.stats
        out.write("\n")
        out.flush()
    except ClientError as exc:  # ServerError included: the server's message, verbatim
        if printed:
            out.write("\n")
        out.flush()
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if args.timing:
        print_timing(stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
