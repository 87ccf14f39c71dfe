"""One schema for engine settings: the build's limits group is EngineConfig's fields, read from their
metadata (help, bounds, TensorRT-LLM counterpart), and EngineConfig checks itself with the same rules."""
from __future__ import annotations

import dataclasses
import json

import pytest

from build.settings import Settings, SettingsError, describe, load_settings
from build.settings_schema import ALIASES, FIELDS, EngineLimits, engine_limit_fields
from qwen_triton.config import DERIVED, UNLESS_SET, EngineConfig, setting


def test_every_engine_config_field_is_a_limits_setting_or_derived():
    limits = {f.name: f for f in dataclasses.fields(EngineLimits)}
    for f in dataclasses.fields(EngineConfig):
        if f.metadata["build"] == DERIVED:
            assert f.name not in FIELDS and f.name in Settings().derived_engine_fields()
            continue
        mine = limits.pop(f.name)
        assert FIELDS[f.name][0] == "limits"
        assert mine.default == (None if f.metadata["build"] == UNLESS_SET else f.default)
        assert {**mine.metadata, "help": None} == {**f.metadata, "help": None}
        assert f.metadata["help"] in mine.metadata["help"]
    assert not limits, f"limits settings that are no EngineConfig field: {sorted(limits)}"


def test_a_new_engine_config_field_becomes_a_setting_without_more_code():
    @dataclasses.dataclass(frozen=True)
    class Extended(EngineConfig):
        new_knob: int = setting(3, "a knob", min=1)
        new_flag: bool = setting(False, "a flag", trtllm="trtllm-build --flag")

    fields = {name: (tp, f) for name, tp, f in engine_limit_fields(Extended)}
    assert fields["new_knob"][0] is int and fields["new_knob"][1].default == 3
    assert fields["new_knob"][1].metadata["help"] == "ours: a knob" and fields["new_knob"][1].metadata["min"] == 1
    assert fields["new_flag"][1].metadata["help"] == "a flag (TensorRT-LLM: trtllm-build --flag)"
    assert "max_model_len" not in fields  # derived by the build


def test_engine_config_json_holds_every_field_the_settings_decide():
    s = Settings.from_dict({"kv_cache_max_bytes": 1 << 20, "kv_cache_memory_fraction": 0.5})
    fields = json.loads(s.engine_config_json())
    assert set(fields) == {f.name for f in dataclasses.fields(EngineConfig)}
    assert fields["kv_cache_memory_fraction"] == 0.5 and fields["kv_cache_max_bytes"] == 1 << 20
    assert fields["max_model_len"] == s.max_seq_len
    assert "kv_cache_max_bytes" not in json.loads(Settings().engine_config_json())  # None: the engine's default


def test_the_trtllm_parameter_name_is_an_alias():
    assert ALIASES == {"kv_cache_free_gpu_mem_fraction": "kv_cache_memory_fraction",
                       "enable_kv_cache_reuse": "enable_prefix_caching", "tp_size": "tensor_parallel_size"}
    assert load_settings(None, ["enable_kv_cache_reuse=false"]).limits.enable_prefix_caching is False
    for s in (load_settings(None, ["kv_cache_free_gpu_mem_fraction=0.25"]),
              load_settings(None, ["limits.kv_cache_free_gpu_mem_fraction=0.25"]),
              Settings.from_dict({"limits": {"kv_cache_free_gpu_mem_fraction": 0.25}})):
        assert s.limits.kv_cache_memory_fraction == 0.25
    with pytest.raises(SettingsError, match="given twice"):
        Settings.from_dict({"kv_cache_free_gpu_mem_fraction": 0.25, "kv_cache_memory_fraction": 0.5})
    with pytest.raises(SettingsError, match="must be <= 1"):
        load_settings(None, ["kv_cache_free_gpu_mem_fraction=2"])
    assert "kv_cache_free_gpu_mem_fraction (= kv_cache_memory_fraction)" in describe()


def test_ignored_with_tensorrtllm_are_the_fields_without_a_counterpart():
    ours = [f.name for f in dataclasses.fields(EngineConfig) if not f.metadata["trtllm"]]
    assert ours == ["kv_cache_max_bytes", "device", "attention_backend", "layer_kernels", "enforce_eager",
                    "async_scheduling", "cuda_graph_max_batch", "cuda_graph_max_prefill_tokens", "max_logits_bytes"]
    changed = {"engine": "tensorrtllm", "enforce_eager": True, "max_logits_bytes": 1 << 20, "block_size": 32}
    assert Settings.from_dict(changed).ignored() == ["enforce_eager", "max_logits_bytes"]


@pytest.mark.parametrize("kwargs, message", [
    ({"max_num_seqs": 0}, "EngineConfig.max_num_seqs must be >= 1, got 0"),
    ({"num_kv_blocks": 0}, "EngineConfig.num_kv_blocks must be >= 1"),
    ({"kv_cache_memory_fraction": 0.0}, "EngineConfig.kv_cache_memory_fraction must be > 0.0"),
    ({"kv_cache_memory_fraction": 1.5}, "EngineConfig.kv_cache_memory_fraction must be <= 1.0"),
    ({"kv_cache_memory_fraction": float("nan")}, "must be a finite number"),
    ({"dtype": "fp16"}, "EngineConfig.dtype must be one of auto, float32, bfloat16, float16"),
    ({"device": "gpu"}, "EngineConfig.device: 'gpu' is not valid"),
    ({"attention_backend": "flash"}, "EngineConfig.attention_backend must be one of"),
])
def test_engine_config_checks_its_metadata_rules(kwargs, message):
    with pytest.raises(ValueError) as err:
        EngineConfig(**kwargs)
    assert message in str(err.value)


def test_engine_config_accepts_what_the_build_writes():
    EngineConfig(device="cuda:3", dtype="bfloat16", num_kv_blocks=None, max_model_len=None)
    assert EngineConfig(**json.loads(Settings().engine_config_json())) == Settings().engine_config()
