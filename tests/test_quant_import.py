"""Published GPTQ / AWQ checkpoints (quant/published.py, export.py) imported into our 4-bit format
(quant/imported.py): the bit layouts against hand-computed words and a bit-by-bit reading of the published
formats, whole tiny checkpoints of every architecture (qwen2, llama, the original qwen) packed with
GPTQ (act-order or not, sym or not, v1 or v2) and AWQ, imported and compared exactly with the weights
packed and with our float loader's fused layout; the real SmolLM2 weights when they are at hand; the errors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import checkpoints as ck
import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen_triton.attention.torch_backend import TorchAttentionBackend
from qwen_triton.errors import CheckpointError
from qwen_triton.models import load_model, load_model_config
from qwen_triton.models.archs import arch_spec
from qwen_triton.quant import algorithms as algo
from qwen_triton.quant.export import quantization_config, write_published_checkpoint
from qwen_triton.quant.formats import dequantize_int4
from qwen_triton.quant.imported import (
    detect_quantization,
    import_checkpoint,
    imported_settings,
    linear_modules,
)
from qwen_triton.quant.published import (
    Int4Weight,
    concat_outputs,
    default_g_idx,
    pack_awq,
    pack_gptq,
    unpack_awq,
    unpack_gptq,
)

G = 32  # the tiny checkpoints' widths are 64 and 128


# -- the bit layouts ---------------------------------------------------------------------------------------


def _word(value: int) -> int:
    """The int32 a 32-bit pattern reads as."""
    return value - (1 << 32) if value >= 1 << 31 else value


def _weight(n: int, k: int, group: int, seed: int = 0, g_idx=None) -> Int4Weight:
    gen = torch.Generator().manual_seed(seed)
    return Int4Weight(torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=gen),
                      (torch.rand(n, k // group, generator=gen) + 0.01).half().float(),
                      torch.randint(0, 16, (n, k // group), dtype=torch.uint8, generator=gen),
                      default_g_idx(k, group) if g_idx is None else g_idx)


def test_words_hold_the_fields_where_the_published_formats_put_them():
    w = _weight(8, 64, 32)
    w.codes[0, :8] = torch.arange(1, 9, dtype=torch.uint8)  # GPTQ packs along K, field f = k 8i + f
    w.codes[:8, 0] = torch.arange(8, dtype=torch.uint8)  # AWQ packs along N, field f = n AWQ_ORDER[f]
    w.codes[0, 0] = 1
    w.zeros[:8, 0] = 8  # a symmetric group's zero point
    gptq = pack_gptq(w, "gptq")
    assert int(gptq["qweight"][0, 0]) == _word(0x87654321)
    assert int(gptq["qzeros"][0, 0]) == _word(0x77777777)  # v1: zero - 1 in every field
    assert int(pack_gptq(w, "gptq_v2")["qzeros"][0, 0]) == _word(0x88888888)
    w.codes[0, 0] = 0
    assert int(pack_awq(w)["qweight"][0, 0]) == _word(0x75316420)  # columns 0 2 4 6 1 3 5 7 from the bottom
    w.zeros[:8, 0] = torch.tensor([0, 3, 0, 0, 0, 0, 0, 9], dtype=torch.uint8)
    # a zero point 0 in v1 borrows from the next field, as GPTQModel's v2 -> v1 subtraction does
    assert int(pack_gptq(w, "gptq")["qzeros"][0, 0]) == _word((0x90000030 - 0x11111111) % (1 << 32))
    back = unpack_gptq(*(pack_gptq(w, "gptq")[t] for t in ("qweight", "qzeros", "scales", "g_idx")), 32)
    assert back.zeros[:8, 0].tolist() == [0, 3, 0, 0, 0, 0, 0, 9]


def _gptq_bit_by_bit(w: Int4Weight, v1: bool) -> tuple[list[list[int]], list[list[int]]]:
    """The published GPTQ words, one field at a time, as the format describes them."""
    n, k = w.codes.shape
    qweight = [[sum(int(w.codes[c, 8 * i + f]) << 4 * f for f in range(8)) for c in range(n)] for i in range(k // 8)]
    qzeros = [[sum(int(w.zeros[8 * j + f, g]) << 4 * f for f in range(8)) for j in range(n // 8)]
              for g in range(w.scales.shape[1])]
    if v1:
        qzeros = [[(z - 0x11111111) % (1 << 32) for z in row] for row in qzeros]
    return [[_word(v) for v in r] for r in qweight], [[_word(v) for v in r] for r in qzeros]


def _awq_bit_by_bit(w: Int4Weight) -> tuple[list[list[int]], list[list[int]]]:
    order = (0, 2, 4, 6, 1, 3, 5, 7)
    n, k = w.codes.shape

    def pack(rows):  # rows[r][c] -> words[r][j]
        return [[_word(sum(int(rows[r][8 * j + order[f]]) << 4 * f for f in range(8))) for j in range(n // 8)]
                for r in range(len(rows))]

    return pack(w.codes.t().tolist()), pack(w.zeros.t().tolist())


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
def test_gptq_packing_equals_a_bit_by_bit_packing_and_unpacks_exactly(fmt):
    w = _weight(16, 64, 32, seed=1, g_idx=torch.randint(0, 2, (64,), dtype=torch.int32))
    packed = pack_gptq(w, fmt)
    qweight, qzeros = _gptq_bit_by_bit(w, v1=fmt == "gptq")
    assert packed["qweight"].tolist() == qweight and packed["qzeros"].tolist() == qzeros
    assert packed["qweight"].dtype == packed["qzeros"].dtype == packed["g_idx"].dtype == torch.int32
    assert packed["scales"].dtype == torch.float16 and list(packed["scales"].shape) == [2, 16]
    back = unpack_gptq(packed["qweight"], packed["qzeros"], packed["scales"], packed["g_idx"], 32, fmt)
    for field in ("codes", "scales", "zeros", "g_idx"):
        assert torch.equal(getattr(back, field), getattr(w, field)), field


def test_awq_packing_equals_a_bit_by_bit_packing_and_unpacks_exactly():
    w = _weight(16, 64, 32, seed=2)
    packed = pack_awq(w)
    qweight, qzeros = _awq_bit_by_bit(w)
    assert packed["qweight"].tolist() == qweight and packed["qzeros"].tolist() == qzeros
    assert list(packed["qweight"].shape) == [64, 2] and list(packed["scales"].shape) == [2, 16]
    back = unpack_awq(packed["qweight"], packed["qzeros"], packed["scales"], 32)
    for field in ("codes", "scales", "zeros", "g_idx"):
        assert torch.equal(getattr(back, field), getattr(w, field)), field


# -- whole checkpoints -------------------------------------------------------------------------------------

FORMATS = {  # name: (method, sym, act_order, checkpoint_format)
    "gptq-sym": ("gptq", True, False, "gptq"),
    "gptq-asym-act-order": ("gptq", False, True, "gptq"),
    "gptq-v2-act-order": ("gptq", True, True, "gptq_v2"),
    "awq": ("awq", False, False, "gemm"),
}


def _tensors(path: str) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def _rtn_in_order(w: torch.Tensor, order: torch.Tensor, sym: bool) -> Int4Weight:
    """Round to nearest with the groups taken over the input channels in `order` (an act-order layout)."""
    q = algo.rtn_quantize(w[:, order], G, sym=sym)
    codes = torch.empty_like(q.codes)
    codes[:, order] = q.codes
    g_idx = torch.empty_like(q.g_idx)
    g_idx[order] = q.g_idx
    return Int4Weight(codes, q.scales, q.zeros, g_idx)


def _quantize_float_checkpoint(src: str, fmt: str, seed: int = 0, gptq: bool = True) -> dict[str, Int4Weight]:
    """Every linear module of `src` quantized the way `fmt` would: GPTQ with a random Hessian (so that
    act-order gives real permutations), or (gptq False: faster) round to nearest in a random act-order;
    the parts of one fused layer quantized stacked, so that they share one g_idx."""
    method, sym, act_order, _ = FORMATS[fmt]
    config = load_model_config(src)
    modules = linear_modules(arch_spec(config.arch, src).weight_names(config))
    tensors = _tensors(src)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for parts in modules.values():
        w = torch.cat([tensors[f"{m}.weight"].float() for m in parts])
        k = w.shape[1]
        if method == "awq":
            q = algo.rtn_quantize(w, G, sym=False, style="awq")
        elif gptq:
            x = torch.randn(256, k, generator=gen) * torch.rand(k, generator=gen)
            q = algo.gptq_quantize(w, x.t() @ x, G, act_order=act_order, sym=sym)
        else:
            q = _rtn_in_order(w, torch.randperm(k, generator=gen) if act_order else torch.arange(k), sym)
        row = 0
        for m in parts:
            n = tensors[f"{m}.weight"].shape[0]
            out[m] = Int4Weight(q.codes[row:row + n], q.scales[row:row + n], q.zeros[row:row + n], q.g_idx)
            row += n
    return out


def _write(src: str, dst: str, fmt: str, layers=None) -> dict[str, Int4Weight]:
    method, sym, act_order, checkpoint_format = FORMATS[fmt]
    layers = layers if layers is not None else _quantize_float_checkpoint(src, fmt)
    qconfig = quantization_config(method, G, desc_act=act_order, sym=sym, checkpoint_format=checkpoint_format)
    write_published_checkpoint(dst, src, layers, qconfig)
    return layers


def _float_reference(quantized: str, layers: dict[str, Int4Weight], dst: str) -> str:
    """The float checkpoint of the same weights: each module's dequantized weight under <module>.weight."""
    tensors = {k: v for k, v in _tensors(quantized).items()
               if k.rsplit(".", 1)[0] not in layers or k.endswith(".bias")}
    tensors.update({f"{m}.weight": w.dequantize() for m, w in layers.items()})
    os.makedirs(dst)
    save_file(tensors, os.path.join(dst, "model.safetensors"))
    with open(os.path.join(quantized, "config.json")) as f:
        config = json.load(f)
    del config["quantization_config"]
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config, f)
    return dst


def _check_import(quantized: str, layers: dict[str, Int4Weight], reference: str, act_order: bool) -> None:
    """The import holds exactly the packed weights, in the float loader's fused layout; the rest as loaded."""
    config = load_model_config(quantized)
    state = import_checkpoint(quantized, config, dtype=torch.float32)
    model = load_model(reference, config, torch.float32, "cpu", TorchAttentionBackend())
    params = dict(model.named_parameters())
    modules = linear_modules(arch_spec(config.arch, quantized).weight_names(config))
    expected_names = {n for n in params if n.removesuffix(".weight") not in modules}
    for layer, parts in modules.items():
        expected_names |= {f"{layer}.{t}" for t in ("qweight", "scales", "zeros")}
        if act_order:
            expected_names.add(f"{layer}.perm")
        weight = dequantize_int4(state[f"{layer}.qweight"], state[f"{layer}.scales"], state[f"{layer}.zeros"],
                                 state.get(f"{layer}.perm"))
        assert torch.equal(weight, concat_outputs([layers[m] for m in parts]).dequantize()), layer
        assert torch.equal(weight, params[f"{layer}.weight"]), layer
        assert state[f"{layer}.qweight"].dtype == state[f"{layer}.zeros"].dtype == torch.uint8
        assert state[f"{layer}.scales"].dtype == torch.float32
    assert set(state) == expected_names
    for name in expected_names - {n for n in state if n.rsplit(".", 1)[0] in modules}:
        assert torch.equal(state[name], params[name]), name


def _tiny(arch: str, path) -> str:
    if arch == "qwen":
        return ck.convert_qwen2_to_qwen(ck.write_qwen2_mha(str(path / "mha")), str(path / "qwen"))
    return {"qwen2": ck.write_qwen2, "llama": ck.write_llama}[arch](str(path / arch))


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen"])
def test_a_published_checkpoint_imports_exactly_in_the_float_loaders_layout(arch, fmt, tmp_path):
    src = _tiny(arch, tmp_path)
    layers = _write(src, str(tmp_path / "quantized"), fmt)
    act_order = FORMATS[fmt][2]
    assert any(not torch.equal(w.g_idx, default_g_idx(w.g_idx.numel(), G)) for w in layers.values()) == act_order
    quantized = str(tmp_path / "quantized")
    assert detect_quantization(quantized) == FORMATS[fmt][0] and detect_quantization(src) is None
    assert imported_settings(quantized) == {"group_size": G, "act_order": act_order}
    _check_import(quantized, layers, _float_reference(quantized, layers, str(tmp_path / "ref")), act_order)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["gptq-asym-act-order", "awq"])
def test_real_smollm_weights_import_exactly(real_smollm, fmt, tmp_path):
    """SmolLM2-135M's own weights (sharded, tied embeddings), round to nearest at group 32."""
    layers = _quantize_float_checkpoint(str(real_smollm), fmt, gptq=False)
    quantized = str(tmp_path / "quantized")
    _write(str(real_smollm), quantized, fmt, layers)
    _check_import(quantized, layers, _float_reference(quantized, layers, str(tmp_path / "ref")), FORMATS[fmt][2])


# -- errors ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny Qwen2 in GPTQ act-order format (a folder to copy and break)."""
    path = tmp_path_factory.mktemp("published")
    src = ck.write_qwen2(str(path / "float"))
    _write(src, str(path / "gptq"), "gptq-asym-act-order")
    return path / "gptq"


def _copy(published, tmp_path, config_edit=None, tensors_edit=None) -> str:
    dst = tmp_path / "broken"
    os.makedirs(dst)
    with open(published / "config.json") as f:
        config = json.load(f)
    if config_edit:
        config_edit(config["quantization_config"])
    with open(dst / "config.json", "w") as f:
        json.dump(config, f)
    tensors = load_file(str(published / "model.safetensors"))
    if tensors_edit:
        tensors_edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return str(dst)


@pytest.mark.parametrize("edit, message", [
    (lambda q: q.update(bits=8), "bits 8 is not supported"),
    (lambda q: q.update(group_size=-1), "group_size -1"),
    (lambda q: q.update(checkpoint_format="marlin"), "checkpoint_format 'marlin'"),
    (lambda q: q.update(quant_method="awq", version="gemv"), "AWQ version 'gemv'"),
    (lambda q: q.update(quant_method="awq", version="exllama"), "AWQ version 'exllama'"),
    (lambda q: q.update(quant_method="awq", zero_point=False), "zero_point false"),
    (lambda q: q.update(quant_method="bitsandbytes"), "quant_method 'bitsandbytes'"),
])
def test_unsupported_settings_are_named(published, tmp_path, edit, message):
    path = _copy(published, tmp_path, config_edit=edit)
    with pytest.raises(CheckpointError, match=message) as info:
        import_checkpoint(path)
    assert "quantization_config" in str(info.value)


def _unquantize(tensors, module="model.layers.0.mlp.down_proj"):
    for suffix in ("qweight", "qzeros", "scales", "g_idx"):
        tensors.pop(f"{module}.{suffix}")
    tensors[f"{module}.weight"] = torch.ones(64, 128, dtype=torch.float16)


def _regroup(tensors, name):
    tensors[name] = torch.flip(tensors[name], [0])  # another order than the other parts of its layer


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.qzeros"), "missing tensor model.layers.1.mlp.up_proj.qzeros"),
    (lambda t: _regroup(t, "model.layers.0.self_attn.k_proj.g_idx"),
     "layers.0.self_attn.qkv_proj from .*k_proj.*: fused parts have different g_idx"),
    (lambda t: t["model.layers.0.mlp.down_proj.g_idx"].fill_(0), "not a permutation of 4 equal groups"),
    (lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": torch.ones(64)}), "unexpected tensors"),
    (_unquantize, "down_proj is stored unquantized"),
    (lambda t: t.update({"model.layers.0.mlp.down_proj.qweight":
                         t.pop("model.layers.0.mlp.down_proj.qweight")[:8]}), "down_proj"),
])
def test_broken_tensors_are_named(published, tmp_path, edit, message):
    path = _copy(published, tmp_path, tensors_edit=edit)
    with pytest.raises(CheckpointError, match=message):
        import_checkpoint(path)


def test_an_all_zero_bias_the_layer_does_not_have_is_ignored(published, tmp_path):
    path = _copy(published, tmp_path, tensors_edit=lambda t: t.update(
        {"model.layers.0.self_attn.o_proj.bias": torch.zeros(64, dtype=torch.float16)}))
    assert "layers.0.self_attn.o_proj.bias" not in import_checkpoint(path)


def test_a_method_other_than_the_checkpoints_is_refused(published):
    with pytest.raises(CheckpointError, match="expected a awq checkpoint; this one is gptq"):
        import_checkpoint(published, method="awq")


# -- the quantizers ----------------------------------------------------------------------------------------


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1024, 128, generator=gen) @ torch.randn(128, 128, generator=gen) * torch.rand(128, generator=gen)
    return torch.randn(48, 128, generator=gen), x


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("sym", [True, False])
def test_gptq_has_a_smaller_output_error_than_round_to_nearest(act_order, sym):
    w, x = _problem()
    gptq = algo.gptq_quantize(w, x.t() @ x, G, act_order=act_order, sym=sym)
    rtn = algo.rtn_quantize(w, G, sym=sym)
    error = {name: float((x @ (q.dequantize() - w).t()).pow(2).mean()) for name, q in (("gptq", gptq), ("rtn", rtn))}
    assert error["gptq"] < 0.8 * error["rtn"], error
    assert torch.equal(gptq.scales, gptq.scales.half().float())  # what the fp16 checkpoint stores


def test_awq_scales_do_not_increase_the_output_error_of_round_to_nearest():
    w, x = _problem(1)
    x = x * torch.linspace(0.1, 10, 128)  # salient input channels
    s, ratio = algo.awq_search_scales([w], G, x.abs().mean(dim=0), algo.linear_output_loss(x, [w]))
    assert ratio >= 0  # a scaling beat plain rounding
    scaled = algo.fake_quantize(w * s, G) / s
    plain = algo.fake_quantize(w, G)
    err = {n: float((x @ (q - w).t()).pow(2).mean()) for n, q in (("awq", scaled), ("rtn", plain))}
    assert err["awq"] < err["rtn"], err
    bound = algo.awq_search_clip(x, w, G)
    clipped = algo.fake_quantize(algo.clip_weight(w, bound), G)
    assert float((x @ (clipped - w).t()).pow(2).mean()) <= err["rtn"]


def test_a_4bit_lm_head_comes_back_dequantized(tmp_path):
    """GPTQModel's lm_head=true: the head is stored 4-bit; ours stays float."""
    src = ck.write_qwen2(str(tmp_path / "float"))
    layers = _quantize_float_checkpoint(src, "gptq-sym")
    head = load_file(os.path.join(src, "model.safetensors"))["lm_head.weight"]
    layers["lm_head"] = algo.rtn_quantize(head, G, sym=True)
    _write(src, str(tmp_path / "gptq"), "gptq-sym", layers)
    state = import_checkpoint(tmp_path / "gptq")
    assert torch.equal(state["lm_head.weight"], layers["lm_head"].dequantize())


def test_autogptqs_side_file_is_read_when_config_json_has_no_settings(published, tmp_path):
    path = _copy(published, tmp_path)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    settings = config.pop("quantization_config")
    del settings["quant_method"]  # AutoGPTQ's quantize_config.json predates it
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(path, "quantize_config.json"), "w") as f:
        json.dump(settings, f)
    assert detect_quantization(path) == "gptq"
    assert imported_settings(path) == {"group_size": G, "act_order": True}


# -- the quantizing tool -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tmp_path_factory):
    """A tiny random Qwen2 with the real Qwen vocabulary (the tool renders its calibration prompts)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from qwen_triton.chat.tokenizer import default_qwen_vocab

    path = tmp_path_factory.mktemp("tiny-tok")
    config = Qwen2Config(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                         initializer_range=0.1)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    (path / "qwen.tiktoken").write_bytes(default_qwen_vocab())
    return path


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_the_tool_writes_a_checkpoint_the_importer_reads(tiny_with_tokenizer, method, tmp_path):
    from tools.quantize_int4 import main

    dst = tmp_path / method
    extra = ["--act-order", "--asym"] if method == "gptq" else []
    main(["--method", method, str(tiny_with_tokenizer), str(dst), "--group-size", "32", "--tokens", "512",
          "--seq-len", "128", "--search-tokens", "128", "--threads", "0", *extra])  # 0: leave torch alone
    assert (dst / "qwen.tiktoken").exists()
    settings = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert settings["quant_method"] == method and settings["group_size"] == 32
    state = import_checkpoint(dst)
    assert ("layers.0.self_attn.qkv_proj.perm" in state) == (method == "gptq")
    src = load_file(str(tiny_with_tokenizer / "model.safetensors"))
    w = torch.cat([src[f"model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"])
    q = dequantize_int4(*(state[f"layers.0.self_attn.qkv_proj.{t}"] for t in ("qweight", "scales", "zeros")),
                        state.get("layers.0.self_attn.qkv_proj.perm"))
    # W diag(norm): what the layer computes from the normalised input (AWQ moved its scales into the norm)
    norm, new_norm = src["model.layers.0.input_layernorm.weight"], state["layers.0.input_layernorm.weight"]
    assert _rel(q * new_norm.float(), w * norm) < 0.15
