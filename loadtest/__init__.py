"""Locust load tests of the qwen-triton ensemble: time to first token, inter-token latency and throughput.

* :mod:`loadtest.workloads` -- what to send: fixed lengths, a seeded ShareGPT-like mix, multi-turn chat.
* :mod:`loadtest.metrics` -- one record per request and the serving metrics as GenAI-Perf and vLLM's
  benchmark define them (TTFT, ITL, latency, tokens/s, requests/s, percentiles).
* :mod:`loadtest.prometheus` -- Triton's metrics port, scraped during the run.
* :mod:`loadtest.users` -- the Locust users (HTTP SSE, gRPC streaming, HTTP non-streaming), on gevent.
* :mod:`loadtest.run` -- the headless concurrency sweep that writes CSV and JSON
  (``python -m loadtest.run --help``); ``tools/loadtest_report.py`` turns them into an HTML page.
* ``loadtest/locustfile.py`` -- the same users for Locust's own CLI and web UI.
* :mod:`loadtest.soak` -- the reliability soak (``python -m loadtest.soak --help``; docs/soak.md):
  HTTP and gRPC, streaming and not, cancellations, a catalogue of malformed requests
  (:mod:`loadtest.soak_catalogue`), KV-exhausting bursts, chats, faults; plain threads, no gevent.

Only :mod:`loadtest.users` (and the modules that import it) patches the standard library for gevent;
workloads, metrics and prometheus are plain Python and safe to import anywhere.
"""
