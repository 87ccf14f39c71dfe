"""The HTTP front's cost per relayed SSE event, on the CPU: a stand-in Triton (a bare asyncio HTTP/1.1
server streaming `--events` SSE events a request, one per stream every `--tick-ms`, as the engine's steps
do), the front (qwen_triton.runtime.front under uvicorn, in its own process, as the supervisor serves it)
and bare asyncio clients (`--streams` concurrent streams, requests back to back for `--seconds`).

    python -m tools.front_benchmark [--streams 256] [--events 128] [--tick-ms 20] [--seconds 15] [--out f.json]

It reports, through the front and straight to the stand-in: events delivered per second, time to the first
event, and the front process's CPU time per relayed event (the figure that bounds the served throughput:
at one core, 100 us an event caps the front at 10,000 events/s). Served on the H200 at 256 users, the front
halved the tokens/s that gRPC (which does not pass it) delivered (docs/benchmarks.md, round two).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import statistics
import time

from qwen_triton.runtime.process import free_port

HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
        b"connection: keep-alive\r\n\r\n")


async def _read_request(reader: asyncio.StreamReader) -> str:
    """The request line; headers and a content-length body are read and dropped."""
    head = await reader.readuntil(b"\r\n\r\n")
    line, *headers = head.decode().split("\r\n")
    length = next((int(h.split(":")[1]) for h in headers if h.lower().startswith("content-length:")), 0)
    if length:
        await reader.readexactly(length)
    return line


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def upstream(port: int, events: int, tick_s: float) -> None:
    """The stand-in Triton: 404 for a model's config (the front then checks no fields), 200 for readiness,
    and for a *_stream POST an SSE stream of `events` events, one every tick_s."""
    event = b'data: {"model_name":"ensemble","text_output":"tok","output_log_probs":[0.0]}\n\n'

    async def serve(reader, writer):
        try:
            while True:
                line = await _read_request(reader)
                if "_stream" not in line:
                    status = b"200 OK" if "ready" in line else b"404 Not Found"
                    writer.write(b"HTTP/1.1 %s\r\ncontent-length: 2\r\n\r\n{}" % status)
                    continue
                writer.write(HEAD)
                for _ in range(events):
                    await asyncio.sleep(tick_s)
                    writer.write(_chunk(event))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    asyncio.run(main())


def front(port: int, upstream_port: int) -> None:
    import uvicorn

    from qwen_triton.runtime.front import FrontConfig, create_app

    app = create_app(FrontConfig(triton_url=f"http://127.0.0.1:{upstream_port}"))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")


async def _stream(port: int, deadline: float, stats: dict) -> None:
    body = json.dumps({"text_input": "hi", "max_tokens": 128}).encode()
    request = (b"POST /v2/models/ensemble/generate_stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
               b"\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.monotonic() < deadline:
        start, first = time.monotonic(), None
        writer.write(request)
        await reader.readuntil(b"\r\n\r\n")
        while True:  # chunked body: size line, data, CRLF
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            first = first or time.monotonic() - start
            stats["events"] += data.count(b"data: ")
        stats["ttft"].append(first or 0.0)
        stats["requests"] += 1
    writer.close()


def clients(port: int, streams: int, seconds: float, out: mp.Queue) -> None:
    stats = {"events": 0, "requests": 0, "ttft": []}

    async def main():
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_stream(port, deadline, stats) for _ in range(streams)))

    start = time.monotonic()
    asyncio.run(main())
    out.put({**stats, "elapsed": time.monotonic() - start})


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def measure(args, through_front: bool) -> dict:
    ctx = mp.get_context("spawn")
    up_port, front_port = free_port(), free_port()
    procs = [ctx.Process(target=upstream, args=(up_port, args.events, args.tick_ms / 1e3), daemon=True)]
    if through_front:
        procs.append(ctx.Process(target=front, args=(front_port, up_port), daemon=True))
    for p in procs:
        p.start()
    _wait_port(up_port)
    target = front_port if through_front else up_port
    _wait_port(target)
    queue = ctx.Queue()
    cpu0 = _cpu_s(procs[-1].pid)
    client = ctx.Process(target=clients, args=(target, args.streams, args.seconds, queue))
    client.start()
    stats = queue.get(timeout=args.seconds + 120)
    client.join()
    cpu = _cpu_s(procs[-1].pid) - cpu0
    for p in procs:
        p.terminate()
    return {"through": "front" if through_front else "stand-in directly",
            "events_per_s": stats["events"] / stats["elapsed"],
            "requests": stats["requests"], "ttft_ms_p50": 1e3 * statistics.median(stats["ttft"] or [0.0]),
            "server_cpu_us_per_event": 1e6 * cpu / max(stats["events"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--events", type=int, default=128)
    ap.add_argument("--tick-ms", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--out")
    args = ap.parse_args()
    import importlib.util

    rows = [measure(args, False), measure(args, True)]
    offered = args.streams * 1e3 / args.tick_ms
    res = {"streams": args.streams, "events": args.events, "tick_ms": args.tick_ms, "offered_events_per_s": offered,
           "cpus": os.cpu_count(), "rows": rows,
           **{m: importlib.util.find_spec(m) is not None for m in ("uvloop", "httptools")}}
    for r in rows:
        print(f"{r['through']:>20}: {r['events_per_s']:8.0f} events/s of {offered:.0f} offered, "
              f"first event p50 {r['ttft_ms_p50']:6.1f} ms, server CPU {r['server_cpu_us_per_event']:5.1f} us/event")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
