"""Server-Sent Events and client disconnects.

A streamed reply is answered as OpenAI streams: `data: <json>` events, then `data: [DONE]`. Its first
event is produced before the response starts, so that a request the engine refuses, or a Triton that is
down, still gets a proper status (400, 503) instead of a 200 with an error inside; an error after that
is sent as a last `data: {"error": ...}` event (the OpenAI SDK raises it). A client that goes away
cancels what it was waiting for: a stream's generator is cancelled by Starlette; a reply that is not
streamed is watched here (`cancel_on_disconnect`), since the ASGI server does not cancel it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from .errors import APIError

T = TypeVar("T")
DONE = b"data: [DONE]\n\n"


class ClientGone(Exception):
    """The client closed its connection before the reply was ready."""


def sse(event: BaseModel | dict[str, Any]) -> bytes:
    """One Server-Sent Event of a JSON object (None fields of a model left out)."""
    data = event.model_dump(exclude_none=True) if isinstance(event, BaseModel) else event
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


async def _disconnected(request: Request) -> None:
    """Returns once the client has closed the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`; if the client disconnects first, cancel it and raise ClientGone."""
    task = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientGone()
    finally:
        for pending in (task, watch):
            if not pending.done():
                pending.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)


async def primed(items: AsyncIterator[T]) -> AsyncIterator[T | None]:
    """`items` with a None put in after the first item has arrived (or after the end, when there is none):
    what goes out before the None can wait until the source has answered, so that a source that fails at
    once fails before the response starts (`event_stream` then answers with the error's status)."""
    async with contextlib.aclosing(items):
        first = await anext(items, _END)
        yield None
        if first is _END:
            return
        yield first
        async for item in items:
            yield item


_END = object()


async def event_stream(request: Request, events: AsyncIterator[bytes]) -> Response:
    """A text/event-stream response of `events` (each one encoded SSE event), then [DONE]."""
    try:
        first = await cancel_on_disconnect(request, anext(events, None))
    except ClientGone:
        await events.aclose()
        return Response(status_code=499)
    except APIError as exc:
        await events.aclose()
        return exc.response()

    async def body() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield first
            async for event in events:
                yield event
        except APIError as exc:
            yield sse(exc.body())
            return
        finally:
            await events.aclose()
        yield DONE

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
