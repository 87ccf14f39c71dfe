"""What a sweep learns from the server besides its replies: Triton's version and the engine model's
settings once (:func:`server_info`), and the metrics port all along (:class:`Scraper`, a greenlet)."""
from __future__ import annotations

import json
import time
from typing import Any

import gevent

from qwen_triton import wire
from qwen_triton.serving import contract as c

from .context import Target
from .prometheus import Snapshot, fetch, timeseries_row


def http_json(url: str, timeout: float = 5.0) -> Any:
    """The JSON of a GET that answered 200, else None."""
    status, body = wire.http_get(url, timeout)
    try:
        return json.loads(body) if status == 200 else None
    except ValueError:
        return None


def server_info(target: Target) -> dict[str, Any]:
    """Triton's version and the engine model's settings, for the report (best effort)."""
    info: dict[str, Any] = {"http_url": target.http_url, "grpc_url": target.grpc_url,
                            "metrics_url": target.metrics_url, "model": target.model}
    meta = http_json(f"{target.http_url}/v2")
    if isinstance(meta, dict):
        info["triton_version"] = meta.get("version")
    engine = http_json(f"{target.http_url}/v2/models/{c.ENGINE}/config")
    if isinstance(engine, dict):
        params = {k: v.get("string_value") for k, v in (engine.get("parameters") or {}).items()
                  if isinstance(v, dict)}
        info["engine_backend"] = engine.get("backend")
        info["engine_max_batch_size"] = engine.get("max_batch_size")
        raw = params.get(c.PARAM_ENGINE_CONFIG)
        if raw:
            try:
                info["engine_config"] = json.loads(raw)
            except ValueError:
                info["engine_config"] = raw
        info["engine_parameters"] = {k: v for k, v in params.items() if k != c.PARAM_ENGINE_CONFIG}
    return info


class Scraper:
    """Scrapes the metrics port every ``interval`` seconds in a greenlet; rows carry the current level.

    ``t0`` (``time.perf_counter``) is the run's start: every time in the run is seconds since it."""

    def __init__(self, t0: float, url: str, interval: float):
        self.t0 = t0
        self.url = url
        self.interval = interval
        self.level: int | None = None
        self.rows: list[dict[str, Any]] = []
        self.greenlet: gevent.Greenlet | None = None
        self.failures = 0

    def now(self) -> float:
        """Seconds since the run's start."""
        return time.perf_counter() - self.t0

    def snapshot(self) -> Snapshot:
        """Scrape once now (a failure is counted and gives an empty snapshot)."""
        snap = fetch(self.url, self.now())
        if not snap.ok:
            self.failures += 1
        return snap

    def level_rows(self, level: int) -> list[dict[str, Any]]:
        """The time-series rows scraped during ``level``."""
        return [r for r in self.rows if r["level"] == level]

    def _loop(self) -> None:
        while True:
            snap = self.snapshot()
            if snap.ok:
                self.rows.append(timeseries_row(snap, self.level))
            gevent.sleep(self.interval)

    def start(self) -> None:
        """Scrape in the background (not at all with an interval of 0: then only at level edges)."""
        if self.interval > 0:
            self.greenlet = gevent.spawn(self._loop)

    def stop(self) -> None:
        """Stop the background scrapes."""
        if self.greenlet is not None:
            self.greenlet.kill()
            self.greenlet = None
