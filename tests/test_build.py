"""The build step (`python -m build`): settings, rendered configs, TensorRT-LLM variant, default checkpoint.

Golden files under tests/golden/ pin exactly what the build writes for GOLDEN_SETTINGS;
regenerate them with QWEN_TRITON_UPDATE_GOLDEN=1 after an intended change and review the diff.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("QWEN_TRITON_UPDATE_GOLDEN") == "1"


from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from build import check as build_check
from build import paths as build_paths
from build import render, repository, trtllm
from build.default_checkpoint import ensure_default_checkpoint, is_current
from build.settings import Settings, SettingsError, load_settings
from build.settings_schema import KEYS
from qwen_triton import EngineConfig
from qwen_triton.serving import contract as c

assert Path(render.__file__).is_relative_to(ROOT / "build"), render.__file__

# A fixed settings set with several non-defaults, for both engines.
GOLDEN_SETTINGS = {
    "paths": {"model": "checkpoints/qwen", "model_repo": "model_repo", "artifacts": "artifacts"},
    "serving": {"triton_max_batch_size": 32, "max_input_len": 1024, "max_output_len": 512,
                "preprocessing_instance_count": 2, "postprocessing_instance_count": 2,
                "max_queue_delay_microseconds": 100, "default_system_prompt": "You are Qwen, a \"helpful\" 助手."},
    "limits": {"max_num_seqs": 32, "max_num_batched_tokens": 1024, "block_size": 32, "num_kv_blocks": 512,
               "dtype": "bfloat16"},
}
GOLDEN_TRTLLM = {"engine": "tensorrtllm", "engine_dir": "/opt/qwen-triton/engines/qwen2",
                 "batch_scheduler_policy": "max_utilization", "enable_kv_cache_reuse": True,
                 "gpu_device_ids": [0], "quantization": "int4_wo", "decoding_mode": "top_k_top_p"}

# tensorrtllm_backend's own field tables (tests/upstream/, checked field by field in test_contract_upstream.py)
UPSTREAM = json.loads((Path(__file__).parent / "upstream" / "tensorrtllm_backend_v0.19.0.json").read_text())
UPSTREAM_ENGINE = UPSTREAM["models"][c.ENGINE]


# -- helpers -----------------------------------------------------------------------------------------------


def _project(tmp_path: Path) -> Path:
    """A project folder with a (config-only) checkpoint folder inside it."""
    project = tmp_path / "proj"
    ckpt = project / "checkpoints" / "qwen"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    return project


def _settings(engine: str) -> Settings:
    settings = Settings.from_dict(GOLDEN_SETTINGS)
    return settings.updated(GOLDEN_TRTLLM) if engine == "tensorrtllm" else settings


def _render(tmp_path: Path, engine: str, settings: Settings | None = None) -> tuple[repository.BuildReport, Path]:
    project = _project(tmp_path)
    settings = settings or _settings(engine)
    paths = build_paths.BuildPaths.resolve(settings, project / "checkpoints" / "qwen", base_dir=project)
    report = repository.write_repository(settings, paths, model_info={"arch": "qwen2"})
    return report, project


def _written_files(project: Path, engine: str) -> dict[str, str]:
    files = {f"{m}.pbtxt": (project / "model_repo" / m / "config.pbtxt").read_text() for m in build_paths.MODELS}
    if engine == "tensorrtllm":
        files[trtllm.SCRIPT_NAME] = (project / "artifacts" / "trtllm" / trtllm.SCRIPT_NAME).read_text()
    return files


# -- golden files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["qwen_triton", "tensorrtllm"])
def test_golden_files(tmp_path, engine):
    _, project = _render(tmp_path, engine)
    written = {name: text.replace(str(project), "@PROJECT@") for name, text in _written_files(project, engine).items()}
    folder = GOLDEN / engine
    if UPDATE_GOLDEN:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, text in written.items():
            (folder / name).write_text(text)
    expected = {p.name: p.read_text() for p in sorted(folder.iterdir())}
    assert sorted(written) == sorted(expected), "golden file set differs (QWEN_TRITON_UPDATE_GOLDEN=1 rewrites it)"
    for name, text in written.items():
        assert text == expected[name], f"{engine}/{name} differs from its golden file (QWEN_TRITON_UPDATE_GOLDEN=1)"


@pytest.mark.parametrize("engine", ["qwen_triton", "tensorrtllm"])
def test_every_config_parses_and_has_no_placeholder(tmp_path, engine):
    report, project = _render(tmp_path, engine)
    repo = project / "model_repo"
    for model in build_paths.MODELS:
        text = (repo / model / "config.pbtxt").read_text()
        assert "${" not in text
        cfg = text_format.Parse(text, mc.ModelConfig())
        assert cfg.name == model and cfg.max_batch_size == 32
        assert (repo / model / "1").is_dir()
    assert build_check.check_repository(repo, strict=False).ok
    assert report.written and not report.unchanged
    paths = build_paths.BuildPaths.resolve(_settings(engine), project / "checkpoints" / "qwen", base_dir=project)
    again = repository.write_repository(_settings(engine), paths, model_info={"arch": "qwen2"})
    assert not again.written and len(again.unchanged) == len(build_paths.MODELS)  # idempotent: nothing rewritten


def test_our_engine_config(tmp_path):
    _, project = _render(tmp_path, "qwen_triton")
    repo = project / "model_repo"
    cfgs = {m: text_format.Parse((repo / m / "config.pbtxt").read_text(), mc.ModelConfig()) for m in build_paths.MODELS}
    engine = cfgs[c.ENGINE]
    assert engine.backend == "python" and engine.model_transaction_policy.decoupled
    assert [(g.kind, g.count) for g in cfgs[c.PREPROCESSING].instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 2)]
    for entry in (c.ENSEMBLE, c.BLS):  # the entry points: our Python models, decoupled like the engine
        assert cfgs[entry].backend == "python" and cfgs[entry].model_transaction_policy.decoupled
        entry_params = {k: v.string_value for k, v in cfgs[entry].parameters.items()}
        assert entry_params[c.PARAM_ENGINE_MODEL] == c.ENGINE and entry_params[c.PARAM_MAX_REQUESTS] == "512"
    params = {k: v.string_value for k, v in engine.parameters.items()}
    assert params[c.PARAM_MODEL_PATH] == params[c.PARAM_TOKENIZER_DIR] == "../checkpoints/qwen"
    assert params[c.PARAM_EXCLUDE_INPUT] == "false" and params[c.PARAM_CANCEL_PERIOD_MS] == "100"
    config = EngineConfig(**json.loads(params[c.PARAM_ENGINE_CONFIG]))
    assert config == _settings("qwen_triton").engine_config()
    assert (config.max_num_seqs, config.block_size, config.num_kv_blocks, config.max_model_len, config.dtype) == \
        (32, 32, 512, 1536, "bfloat16")
    pre = {k: v.string_value for k, v in cfgs[c.PREPROCESSING].parameters.items()}
    assert pre[c.PARAM_MAX_INPUT_LEN] == "1024" and pre[c.PARAM_DEFAULT_SYSTEM] == 'You are Qwen, a "helpful" 助手.'
    post = {k: v.string_value for k, v in cfgs[c.POSTPROCESSING].parameters.items()}
    assert post == {c.PARAM_TOKENIZER_DIR: "../checkpoints/qwen", c.PARAM_SKIP_SPECIAL: "true"}
    # every contract tensor is declared as specified
    for model, (inputs, outputs) in c.MODEL_SPECS.items():
        declared = {t.name: t for t in cfgs[model].input}
        for spec in inputs:
            t = declared[spec.name]
            assert (render.dtype_name(t.data_type), tuple(t.dims), t.optional) == (spec.dtype, spec.dims, spec.optional)
            assert t.HasField("reshape") == (spec.reshape is not None) and t.allow_ragged_batch == spec.ragged
        assert [t.name for t in cfgs[model].output] == [s.name for s in outputs]


def test_paths_relative_inside_project_absolute_outside(tmp_path):
    outside = tmp_path / "elsewhere" / "ckpt"
    outside.mkdir(parents=True)
    project = _project(tmp_path)
    settings = _settings("qwen_triton")
    inside = build_paths.BuildPaths.resolve(settings, project / "checkpoints" / "qwen", base_dir=project)
    assert inside.project_root == project
    assert inside.param_path(inside.checkpoint) == "../checkpoints/qwen"
    away = build_paths.BuildPaths.resolve(settings, outside, base_dir=project)
    assert away.param_path(away.checkpoint) == outside.resolve().as_posix()


def test_model_files_copied_but_never_overwritten(tmp_path):
    _, project = _render(tmp_path, "qwen_triton")
    repo = project / "model_repo"
    sources = {m: repository._source_files(m) for m in build_paths.PYTHON_MODELS}
    for model, files in sources.items():
        for src in files:
            assert (repo / model / "1" / src.name).read_bytes() == src.read_bytes()
    edited = repo / c.PREPROCESSING / "1" / "model.py"
    if not sources[c.PREPROCESSING]:
        pytest.skip("no model_repo/preprocessing/1/model.py in this checkout")
    edited.write_text("# edited by hand\n")
    stale = repo / c.POSTPROCESSING / "1" / "model.py"
    manifest = json.loads((repo / build_paths.MANIFEST).read_text())
    paths = build_paths.BuildPaths.resolve(_settings("qwen_triton"), project / "checkpoints" / "qwen", base_dir=project)
    again = repository.write_repository(_settings("qwen_triton"), paths, model_info={"arch": "qwen2"})
    assert edited.read_text() == "# edited by hand\n"
    assert any("was not written by the build" in w for w in again.warnings)
    assert stale.read_bytes() == sources[c.POSTPROCESSING][0].read_bytes()
    assert "preprocessing/1/model.py" in manifest["copied"]


def test_source_repository_is_never_a_target_of_copies(tmp_path):
    settings = _settings("qwen_triton")
    paths = build_paths.BuildPaths(build_paths.SOURCE_REPO.resolve(), tmp_path, tmp_path, tmp_path)
    report = repository.BuildReport(paths.model_repo)
    assert repository._sync_model_files(settings, paths, {}, report) == {} and not report.copied


# -- the pipeline the entry points run ---------------------------------------------------------------


def _contract_io():
    models = {m: build_check.ModelIO.from_specs(*c.MODEL_SPECS[m])
              for m in (c.PREPROCESSING, c.ENGINE, c.POSTPROCESSING)}
    return models, build_check.ModelIO.from_specs(c.ENSEMBLE_INPUTS, c.ENSEMBLE_OUTPUTS)


def test_contract_wiring_is_consistent():
    models, ensemble = _contract_io()
    assert build_check.check_wiring(models, ensemble, c.PIPELINE_STEPS) == []
    # every mapped name exists in that model's spec; internal tensors produced once and consumed
    produced = [t for _, _, outs in c.PIPELINE_STEPS for t in outs.values()]
    assert len(produced) == len(set(produced))
    consumed = {t for _, ins, _ in c.PIPELINE_STEPS for t in ins.values()}
    for tensor in produced:
        assert tensor in consumed or tensor in {s.name for s in c.ENSEMBLE_OUTPUTS}
        assert tensor.startswith("_") or tensor in {s.name for s in c.ENSEMBLE_OUTPUTS}
    assert {s.name for s in c.ENSEMBLE_OUTPUTS} <= set(produced)


@pytest.mark.parametrize("breakage, expected", [
    (lambda s: s[0][1].update({"NOPE": "text_input"}), "'NOPE' is not an input of preprocessing"),
    (lambda s: s[1][1].update({c.IN_INPUT_IDS: "_MISSING"}), "nothing produces"),
    (lambda s: s[1][1].pop(c.IN_INPUT_LENGTHS), "required input 'input_lengths' is not mapped"),
    (lambda s: s[2][2].update({c.POST_OUTPUT: c.CUM_LOG_PROBS}), "produced 2 times"),
    (lambda s: s[0][2].update({c.PRE_OUT_PAD_ID: "_UNUSED"}), "never consumed"),
    (lambda s: s[2][2].clear(), "'text_output' is produced by no step"),
    (lambda s: s[1][1].update({c.IN_TOP_K: c.TOP_P}), "is INT32 but 'top_p' is FP32"),
    (lambda s: s[0][1].pop(c.PRE_MESSAGES), "ensemble input 'messages' is consumed by no step"),
])
def test_wiring_errors_are_found(breakage, expected):
    models, ensemble = _contract_io()
    steps = [(m, dict(i), dict(o)) for m, i, o in c.PIPELINE_STEPS]
    breakage(steps)
    errors = build_check.check_wiring(models, ensemble, steps)
    assert any(expected in e for e in errors), errors


def test_entry_points_and_engine_must_agree_on_decoupled(tmp_path):
    _, project = _render(tmp_path, "qwen_triton")
    repo = project / "model_repo"
    path = repo / c.ENGINE / "config.pbtxt"
    path.write_text(path.read_text().replace("model_transaction_policy {\n  decoupled: true\n}\n", ""))
    errors = build_check.check_repository(repo, strict=False).errors
    assert any("decoupled=True but tensorrt_llm has decoupled=False" in e for e in errors), errors


# -- TensorRT-LLM variant -------------------------------------------------------------------------------------


def test_trtllm_variant_uses_upstream_names(tmp_path):
    report, project = _render(tmp_path, "tensorrtllm")
    repo = project / "model_repo"
    engine = text_format.Parse((repo / c.ENGINE / "config.pbtxt").read_text(), mc.ModelConfig())
    assert engine.name == "tensorrt_llm" and engine.backend == "tensorrtllm"
    assert engine.model_transaction_policy.decoupled
    upstream_in = {t["name"]: t for t in UPSTREAM_ENGINE["inputs"]}
    assert [t.name for t in engine.input] == list(upstream_in)  # every upstream input, nothing else
    for t in engine.input:
        row = upstream_in[t.name]
        assert (render.dtype_name(t.data_type).replace("BYTES", "STRING"), list(t.dims), t.optional,
                t.allow_ragged_batch) == (row["data_type"], row["dims"], row["optional"], row["ragged"]), t.name
    upstream_out = {t["name"]: t for t in UPSTREAM_ENGINE["outputs"]}
    for t in engine.output:
        assert list(t.dims) == upstream_out[t.name]["dims"], t.name
    assert render.dtype_name(next(t for t in engine.output if t.name == "context_logits").data_type) == "FP32"
    params = {k: v.string_value for k, v in engine.parameters.items()}
    assert set(params) <= set(UPSTREAM_ENGINE["parameters"])
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["gpt_model_path"] == "/opt/qwen-triton/engines/qwen2"
    assert params["batch_scheduler_policy"] == "max_utilization"
    assert params["max_tokens_in_paged_kv_cache"] == str(512 * 32)
    assert params["enable_kv_cache_reuse"] == "true" and params["enable_chunked_context"] == "true"
    assert params["gpu_device_ids"] == "0" and params["decoding_mode"] == "top_k_top_p"
    assert params["exclude_input_in_output"] == "false" and params["max_beam_width"] == "1"
    ensemble = text_format.Parse((repo / c.ENSEMBLE / "config.pbtxt").read_text(), mc.ModelConfig())
    assert ensemble.backend == "python" and {"context_logits", "generation_logits"} <= {t.name for t in ensemble.output}
    assert not (repo / c.ENGINE / "1" / "model.py").exists()  # the C++ backend needs none
    assert (repo / c.PREPROCESSING / "1").is_dir() and report.script is not None
    check = build_check.check_repository(repo, strict=False)
    assert check.ok and any("does not exist here yet" in w for w in check.warnings)


def test_trtllm_build_script(tmp_path):
    _, project = _render(tmp_path, "tensorrtllm")
    script = project / "artifacts" / "trtllm" / trtllm.SCRIPT_NAME
    text = script.read_text()
    assert os.access(script, os.X_OK) and "NOT RUN HERE" in text
    assert 'cd "$(dirname "$0")/../.."' in text and "CHECKPOINT=checkpoints/qwen" in text
    assert "models/core/qwen/convert_checkpoint.py" in text and "/qwen/convert_checkpoint.py" in text
    assert "--use_weight_only \\\n    --weight_only_precision int4" in text
    for flag in ("--max_batch_size 32", "--max_input_len 1024", "--max_seq_len 1536", "--max_num_tokens 1024",
                 "--kv_cache_type paged", "--tokens_per_block 32", "--gemm_plugin auto", "--dtype bfloat16",
                 "--use_paged_context_fmha enable", "--tp_size 1", "ENGINE_DIR=/opt/qwen-triton/engines/qwen2"):
        assert flag in text, flag
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    # without TRTLLM_EXAMPLES it stops before doing anything
    env = {k: v for k, v in os.environ.items() if k != "TRTLLM_EXAMPLES"}
    run = subprocess.run(["bash", str(script)], check=False, env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "TRTLLM_EXAMPLES" in run.stderr


@pytest.mark.parametrize("quant, kv, expected", [
    ("none", "auto", "--dtype bfloat16 \\\n    --tp_size 2\n"),
    ("int8_wo", "auto", "--weight_only_precision int8"),
    ("int4_gptq", "auto", "--weight_only_precision int4_gptq \\\n    --per_group"),
    ("gptq", "int8", "--weight_only_precision int4_gptq \\\n    --per_group \\\n    --int8_kv_cache"),
    ("fp8", "auto", "quantization/quantize.py\" \\\n    --model_dir \"$CHECKPOINT\""),
    ("fp8", "fp8", "--qformat fp8 \\\n    --calib_size 512 \\\n    --tp_size 2 \\\n    --kv_cache_dtype fp8"),
    ("none", "fp8", "--qformat full_prec"),
    ("int4_awq", "auto", "--qformat int4_awq"),
    ("w8a8", "int8", "--qformat int8_sq"),
])
def test_trtllm_quantization_commands(tmp_path, quant, kv, expected):
    settings = _settings("tensorrtllm").updated({"quantization": quant, "tp_size": 2, "gpu_device_ids": [0, 1],
                                                  "kv_cache_dtype": kv})
    text = trtllm.build_script(settings, arch="qwen", checkpoint=tmp_path / "ckpt", engine_dir=Path("/e"),
                               script_dir=tmp_path / "art" / "trtllm", project_root=tmp_path, seq_length=1024)
    assert expected in text
    assert "--world_size 2" in text and "dynamic NTK" in text  # tp serving note; Qwen v1 past seq_length


def test_trtllm_refuses_what_it_cannot_build():
    with pytest.raises(trtllm.UnsupportedForTrtllm, match="Qwen3"):
        trtllm.check_model("qwen3", _settings("tensorrtllm"))
    with pytest.raises(trtllm.UnsupportedForTrtllm, match="GPTQ"):
        trtllm.check_model("llama", _settings("tensorrtllm").updated({"quantization": "int4_gptq"}))
    with pytest.raises(trtllm.UnsupportedForTrtllm, match="use kv_cache_dtype=int8"):
        trtllm.check_model("qwen", _settings("tensorrtllm").updated({"quantization": "gptq", "kv_cache_dtype": "fp8"}))


# -- settings ----------------------------------------------------------------------------------------------


def test_settings_defaults():
    s = Settings()
    assert (s.paths.model, s.paths.model_repo, s.paths.artifacts) == (None, "model_repo", "artifacts")
    assert (s.engine, s.serving.triton_max_batch_size, s.serving.decoupled, s.serving.exclude_input_in_output) == \
        ("qwen_triton", 64, True, False)
    assert s.serving.default_system_prompt == "You are a helpful assistant."
    assert s.trtllm.batch_scheduler_policy in ("max_utilization", "guaranteed_no_evict")
    assert Settings.from_dict(s.to_dict()) == s
    assert EngineConfig(**json.loads(s.engine_config_json())) == s.engine_config()
    assert s.engine_config().max_model_len == s.serving.max_input_len + s.serving.max_output_len


@pytest.mark.parametrize("data", [
    {"max_num_seq": 8},
    {"limits": {"max_num_seq": 8}},
    {"limits.max_num_seq": 8},
    {"serving.max_num_seqs": 8},  # right key, wrong group
])
def test_unknown_keys_are_rejected_with_a_suggestion(data):
    with pytest.raises(SettingsError) as err:
        Settings.from_dict(data)
    message = str(err.value)
    assert "unknown key" in message and "max_num_seq" in message and "did you mean" in message
    assert "max_num_seqs" in message and "kv_cache_free_gpu_mem_fraction" in message  # lists valid keys


def test_unknown_override_and_group_rejected():
    with pytest.raises(SettingsError, match="unknown key 'blocksize'.*did you mean 'block_size'"):
        Settings().with_overrides(["blocksize=32"])
    with pytest.raises(SettingsError, match="unknown key 'enigne'"):
        Settings.from_dict({"enigne": "tensorrtllm"})
    with pytest.raises(SettingsError, match="expected key=value"):
        Settings().with_overrides(["max_num_seqs"])


@pytest.mark.parametrize("data, expected", [
    ({"max_num_seqs": 0}, "max_num_seqs must be >= 1"),
    ({"max_num_seqs": "8"}, "max_num_seqs must be an integer"),
    ({"max_num_seqs": True}, "max_num_seqs must be an integer"),
    ({"decoupled": "yes"}, "decoupled must be true or false"),
    ({"engine": "vllm"}, "engine must be one of qwen_triton, tensorrtllm"),
    ({"dtype": "fp16"}, "dtype must be one of"),
    ({"device": "gpu"}, "device: 'gpu' is not valid"),
    ({"kv_cache_free_gpu_mem_fraction": 0}, "must be > 0"),
    ({"kv_cache_free_gpu_mem_fraction": 1.5}, "must be <= 1"),
    ({"model_repo": ""}, "model_repo must not be empty"),
    ({"model_repo": None}, "model_repo must not be null"),
    ({"gpu_device_ids": "0,1"}, "gpu_device_ids must be a list of integers"),
    ({"num_kv_blocks": 10}, "cannot hold one request"),
    ({"engine": "tensorrtllm", "device": "cpu"}, "GPUs only"),
    ({"quantization": "int3"}, "quantization must be one of"),
    ({"quant_group_size": 100}, "quant_group_size must be one of"),
    ({"quant_act_scales": "per_row"}, "quant_act_scales must be one of"),
    ({"smooth_alpha": 1.5}, "smooth_alpha must be <= 1"),
    ({"kv_cache_dtype": "int4"}, "kv_cache_dtype must be one of"),
    ({"engine": "tensorrtllm", "block_size": 24}, "power of two"),
    ({"engine": "tensorrtllm", "engine_instance_count": 2}, "must be 1 for tensorrtllm"),
    ({"engine": "tensorrtllm", "tp_size": 2, "gpu_device_ids": [0]}, "must name tensor_parallel_size=2 GPUs"),
    ({"engine": "tensorrtllm", "enable_chunked_context": False, "max_num_batched_tokens": 512},
     "whole prompt must fit"),
    ({"limits": 3}, "'limits' must be an object"),
    ({"max_num_seqs": 8, "limits": {"max_num_seqs": 9}}, "given twice"),
])
def test_bad_values_are_rejected(data, expected):
    with pytest.raises(SettingsError, match=None) as err:
        Settings.from_dict(data)
    assert expected in str(err.value)


def test_overrides_file_and_flags(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"serving": {"engine": "tensorrtllm"}, "limits.max_num_seqs": 16, "tp_size": 2}))
    s = load_settings(path, ["max_num_seqs=8", "gpu_device_ids=2,3", "num_kv_blocks=none", "max_num_seqs=4",
                             "kv_cache_free_gpu_mem_fraction=0.5", "enable_kv_cache_reuse=true"])
    assert (s.engine, s.limits.max_num_seqs, s.trtllm.gpu_device_ids, s.limits.tensor_parallel_size) == \
        ("tensorrtllm", 4, (2, 3), 2)
    assert s.limits.kv_cache_memory_fraction == 0.5 and s.limits.enable_prefix_caching is True
    with pytest.raises(SettingsError, match="max_num_seqs must be an integer"):
        load_settings(None, ["max_num_seqs=many"])
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(SettingsError, match="invalid JSON"):
        load_settings(bad)
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.json")
    assert len(KEYS) == len(set(KEYS))


def test_ignored_settings_are_reported():
    assert Settings.from_dict({"batch_scheduler_policy": "max_utilization"}).ignored() == ["batch_scheduler_policy"]
    assert Settings.from_dict({"engine": "tensorrtllm", "kv_cache_max_bytes": 1 << 20}).ignored() == \
        ["kv_cache_max_bytes"]


# -- the command line ----------------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "build", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, check=False)


def test_cli_check(tmp_path):
    _, project = _render(tmp_path, "qwen_triton")
    repo = project / "model_repo"
    for model in build_paths.PYTHON_MODELS:  # --check is strict about model.py files
        (repo / model / "1" / "model.py").touch()
    run = _cli("--check", "--model-repo", str(repo))
    assert run.returncode == 0, run.stderr
    assert f"ok ({len(build_paths.MODELS)} models" in run.stdout
    cfg = repo / c.POSTPROCESSING / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('"true"', '"${skip_special_tokens}"'))
    (repo / c.PREPROCESSING / "1" / "model.py").unlink()
    run = _cli("--check", "--model-repo", str(repo))
    assert run.returncode == 1
    assert "placeholder" in run.stderr and "preprocessing/1/model.py is missing" in run.stderr


def test_cli_rejects_bad_settings_and_checkpoints(tmp_path):
    run = _cli("--set", "max_num_seq=3", "--model-repo", str(tmp_path / "repo"))
    assert run.returncode == 2 and "did you mean 'max_num_seqs'" in run.stderr
    run = _cli("--model", str(tmp_path / "missing"), "--model-repo", str(tmp_path / "repo"))
    assert run.returncode == 2 and "no such folder" in run.stderr
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    run = _cli("--model", str(tmp_path / "ckpt"), "--model-repo", str(tmp_path / "repo"))
    assert run.returncode == 2 and "model_type 'gpt2' is not supported" in run.stderr
    assert not (tmp_path / "repo").exists()


# -- the default checkpoint ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_checkpoint(tmp_path_factory):
    artifacts = tmp_path_factory.mktemp("artifacts")
    made = ensure_default_checkpoint(artifacts)
    assert made.created
    return made.path


def test_default_checkpoint_is_a_qwen2_with_the_real_vocab(default_checkpoint):
    from qwen_triton.chat import QwenTiktokenTokenizer, load_tokenizer
    from qwen_triton.models import load_model_config

    config = load_model_config(default_checkpoint)
    assert (config.arch, config.hidden_size, config.num_layers, config.num_heads, config.num_kv_heads,
            config.intermediate_size, config.vocab_size, config.max_position) == \
        ("qwen2", 128, 2, 4, 2, 256, 151936, 4096)
    assert (default_checkpoint / "model.safetensors").is_file()
    tokenizer = load_tokenizer(default_checkpoint)
    assert isinstance(tokenizer, QwenTiktokenTokenizer)
    ids = tokenizer.encode("你好")
    assert tokenizer.decode(ids) == "你好"
    assert tokenizer.im_end_id == 151645 and tokenizer.special_tokens["<|endoftext|>"] == 151643
    assert tokenizer.encode("<|im_end|>", allow_special=True) == [151645]
    assert tokenizer.eos_ids == (151645, 151643) and not tokenizer.add_bos


def test_default_checkpoint_runs_in_our_engine(default_checkpoint):
    from qwen_triton import LLMEngine, SamplingParams

    engine = LLMEngine(str(default_checkpoint), EngineConfig(device="cpu", dtype="float32", max_num_seqs=2,
                                                              block_size=16, num_kv_blocks=8))
    params = SamplingParams(max_tokens=4, temperature=0)
    first = engine.generate([[108386, 3837], [9707]], params)
    assert [len(t) for t in first] == [4, 4] and all(0 <= t < 151936 for seq in first for t in seq)
    assert engine.generate([[108386, 3837], [9707]], params) == first  # greedy is deterministic


def test_default_checkpoint_is_idempotent(default_checkpoint, tmp_path):
    again = ensure_default_checkpoint(default_checkpoint.parent)
    assert not again.created and is_current(default_checkpoint)
    copy = tmp_path / "copy"
    shutil.copytree(default_checkpoint, copy)
    (copy / "generation_config.json").write_text("{}")
    assert not is_current(copy)  # a changed file no longer matches its recorded hash
    foreign = tmp_path / "foreign" / "default-qwen2-tiny"
    foreign.mkdir(parents=True)
    (foreign / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="not a default checkpoint"):
        ensure_default_checkpoint(foreign.parent)


def test_cli_builds_a_repository_for_the_default_checkpoint(default_checkpoint, tmp_path):
    repo = tmp_path / "repo"
    run = _cli("--model", "random", "--artifacts", str(default_checkpoint.parent), "--model-repo", str(repo),
               "--set", "device=cpu")
    assert run.returncode == 0, run.stderr
    assert "up to date" in run.stdout and "QwenTiktokenTokenizer" in run.stdout
    params = text_format.Parse((repo / c.ENGINE / "config.pbtxt").read_text(), mc.ModelConfig()).parameters
    # the checkpoint lies outside the repository's project: absolute
    assert params[c.PARAM_MODEL_PATH].string_value == default_checkpoint.resolve().as_posix()
    assert json.loads(params[c.PARAM_ENGINE_CONFIG].string_value)["device"] == "cpu"
    run = _cli("--check", "--model-repo", str(repo), "-q")
    if all(repository._source_files(m) for m in build_paths.PYTHON_MODELS):
        assert run.returncode == 0, run.stderr
    run = _cli("--engine", "tensorrtllm", "--model", "random", "--artifacts", str(default_checkpoint.parent),
               "--model-repo",
               str(tmp_path / "trt_repo"), "--set", "tp_size=1")
    assert run.returncode == 0, run.stderr
    assert (default_checkpoint.parent / "trtllm" / trtllm.SCRIPT_NAME).is_file()


# -- the built repository in a real tritonserver ---------------------------------------------------------------


def _triton():
    """(TritonServer, triton_dir) when the project-local Triton is installed, else None."""
    from qwen_triton.runtime.layout import is_installed
    from qwen_triton.runtime.server import TritonServer

    triton_dir = Path(os.environ.get("TRITON_DIR", ROOT / ".triton"))
    return (TritonServer, triton_dir) if is_installed(triton_dir) else None


@pytest.mark.server
@pytest.mark.slow
def test_built_repository_serves_in_tritonserver(default_checkpoint, tmp_path):
    import requests

    triton = _triton()
    if triton is None:
        pytest.skip("Triton is not installed: run `make triton-install`")
    if not all(repository._source_files(m) for m in build_paths.PYTHON_MODELS):
        pytest.skip("model_repo/*/1/model.py are not all in this checkout")
    server_cls, triton_dir = triton
    repo = tmp_path / "repo"
    run = _cli("--model", "random", "--artifacts", str(default_checkpoint.parent), "--model-repo", str(repo), "-q",
               "--set", "device=cpu", "--set", "max_num_seqs=4", "--set", "num_kv_blocks=256")
    assert run.returncode == 0, run.stderr
    with server_cls(repo, http_port=0, grpc_port=0, metrics_port=0, triton_dir=triton_dir,
                    log_file=tmp_path / "tritonserver.log", extra_args=["--exit-timeout-secs=3"]) as srv, \
            requests.Session() as http:
        url = f"{srv.http_url}/v2/models/{c.ENSEMBLE}/generate"
        body = http.post(url, json={c.TEXT_INPUT: "你好", c.MAX_TOKENS: 4, c.TEMPERATURE: 0.0}, timeout=60)
        assert body.status_code == 200, body.text
        assert isinstance(body.json()[c.TEXT_OUTPUT], str)
        messages = json.dumps([{"role": "user", "content": "hi"}])
        stream = http.post(f"{url}_stream", json={c.MESSAGES: messages, c.MAX_TOKENS: 3, c.STREAM: True},
                           timeout=60)
        assert stream.status_code == 200 and stream.text.count("data: ") == 3, stream.text
