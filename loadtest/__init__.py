"""Locust load tests of the qwen-triton ensemble: time to first token, inter-token latency and throughput.

* :mod:`loadtest.workloads` -- what to send: fixed lengths, a seeded ShareGPT-like mix, multi-turn chat.
* :mod:`loadtest.metrics` -- one record per request and the serving metrics as GenAI-Perf and vLLM's
  benchmark define them (TTFT, ITL, latency, tokens/s, requests/s, percentiles).
* :mod:`loadtest.prometheus` -- Triton's metrics port, scraped during the run.
* :mod:`loadtest.users` -- the Locust users (HTTP SSE, gRPC streaming, HTTP non-streaming), on gevent.
* :mod:`loadtest.run` -- the headless concurrency sweep that writes CSV and JSON
  (``python -m loadtest.run --help``): its command line; :mod:`loadtest.sweep` runs the levels,
  :mod:`loadtest.scrape` asks the server, :mod:`loadtest.run_files` writes the files.
* :mod:`loadtest.report` -- the HTML page of a run (``python -m loadtest.report RUN_DIR``); numpy and
  matplotlib only, no gevent.
* ``loadtest/locustfile.py`` -- the same users for Locust's own CLI and web UI.
* :mod:`loadtest.soak` -- the reliability soak (``python -m loadtest.soak --help``; docs/soak.md):
  HTTP and gRPC, streaming and not, cancellations, a catalogue of malformed requests
  (:mod:`loadtest.soak_catalogue`), KV-exhausting bursts, chats, faults; plain threads, no gevent.

Only :mod:`loadtest.users` and :mod:`loadtest.run` (and the modules that import them: sweep) patch the
standard library for gevent; workloads, metrics, prometheus, run_files and the report are plain Python and
safe to import anywhere.
"""
