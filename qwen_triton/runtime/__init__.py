"""The project-local Triton runtime: tritonserver 2.51 from the ``nvidia-pytriton`` wheel, no Docker.

* :mod:`.install` (``python -m qwen_triton.runtime.install``, ``make triton-install``): the pinned wheel
  (:mod:`.wheel`) unpacked into ``.triton/`` with the stub matching the models' Python
  (:mod:`.interpreter`); what an install looks like: :mod:`.layout`.
* :mod:`.server`: :class:`~.server.TritonServer`, one tritonserver process (command line and the stub's
  environment: :mod:`.launch`; process groups and ports: :mod:`.process`).
* :mod:`.cli` (``python -m qwen_triton.runtime start|stop|status``, ``make serve`` / ``make stop``): a
  server in the background, found again through its state files (:mod:`.state`).

What it does, how the Makefile uses it and Triton 2.51's pitfalls: docs/triton-runtime.md.  Importing this
package imports none of its modules (and never torch).
"""
