"""Clients of the qwen-triton `ensemble` model: a typed library (HTTP and gRPC), a CLI and a terminal chat.

    from clients import GenerateRequest, HttpClient, GrpcClient

    req = GenerateRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=64, temperature=0.0)
    print(HttpClient("localhost:8000").generate(req).text)
    for chunk in GrpcClient("localhost:8001").stream(req):
        print(chunk, end="", flush=True)
"""
from .triton_client import (
    ClientError,
    GenerateRequest,
    GenerateResult,
    GrpcClient,
    HttpClient,
    RequestStats,
    ServerError,
    TextStream,
    make_client,
    parse_sse,
)

__all__ = [
    "ClientError", "GenerateRequest", "GenerateResult", "GrpcClient", "HttpClient", "RequestStats",
    "ServerError", "TextStream", "make_client", "parse_sse",
]
