"""The tensor contract of the model repository, defined once.

The build renders every config.pbtxt from these specs, the Triton models read and write tensors by
these names, and the clients and load tests send them. Inputs and outputs are those of NVIDIA's
tensorrtllm_backend `all_models/inflight_batcher_llm` models as of tag v0.19.0, field by field
(tests/upstream/ holds a copy of upstream's field tables and checks these specs against it). What we
add or leave out is listed in DIFFERENCES with the reason.

Every model is batched (max_batch_size > 0), so each tensor carries a leading batch dimension in
front of the dims given here. Plain Python: no Triton, no torch.
"""
from __future__ import annotations

from ..sampling_params import GUIDE_FIELD, GUIDE_TYPE_FIELD
from .tensor_spec import TensorSpec as TensorSpec  # the tables' type, re-exported: importers take it from here
from .tensor_spec import tensor as _t

UPSTREAM = "triton-inference-server/tensorrtllm_backend v0.19.0, all_models/inflight_batcher_llm"

# Model names in the repository.
PREPROCESSING = "preprocessing"
ENGINE = "tensorrt_llm"  # the upstream name, kept so clients of it work unchanged
POSTPROCESSING = "postprocessing"
ENSEMBLE = "ensemble"  # the public entry point; served by the BLS code (see DIFFERENCES)
BLS = "tensorrt_llm_bls"


LOGITS = "FP32"  # upstream's ${logits_datatype}, as its README fills it
_BEAM = "beam search is not supported by this engine (beam_width 1 only)"
_PTUNE = "prompt tuning (p-tuning embedding tables) is not supported by this engine"
_LORA = "LoRA adapters are not supported by this engine"
_MM = "multimodal inputs are not supported: the models served are text-only"
_DRAFT = "speculative decoding is not supported by this engine"
_ENCDEC = "encoder-decoder models are not supported: the models served are decoder-only"
_DISAGG = "disaggregated (context-only / generation-only) serving is not supported by this engine"
_TOP_P_DECAY = "top-p decay is not supported by this engine"
_RETENTION = "KV-cache retention priorities are not supported by this engine"
_LOOKAHEAD = "lookahead decoding is not supported by this engine"

# -- ensemble / tensorrt_llm_bls: the public entry points ----------------------------------------------
TEXT_INPUT = "text_input"
MESSAGES = "messages"  # ours: a JSON list of {"role", "content"} rendered with the chat template
DECODER_TEXT_INPUT = "decoder_text_input"
MAX_TOKENS = "max_tokens"
NUM_RETURN_SEQUENCES = "num_return_sequences"
BAD_WORDS = "bad_words"
STOP_WORDS = "stop_words"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
END_ID = "end_id"
PAD_ID = "pad_id"
TOP_K = "top_k"
TOP_P = "top_p"
TEMPERATURE = "temperature"
LENGTH_PENALTY = "length_penalty"
REPETITION_PENALTY = "repetition_penalty"
MIN_LENGTH = "min_length"
PRESENCE_PENALTY = "presence_penalty"
FREQUENCY_PENALTY = "frequency_penalty"
RANDOM_SEED = "random_seed"
RETURN_LOG_PROBS = "return_log_probs"
RETURN_CONTEXT_LOGITS = "return_context_logits"
RETURN_GENERATION_LOGITS = "return_generation_logits"
RETURN_PERF_METRICS = "return_perf_metrics"
BEAM_WIDTH = "beam_width"
STREAM = "stream"
EMBEDDING_BIAS_WORDS = "embedding_bias_words"
EMBEDDING_BIAS_WEIGHTS = "embedding_bias_weights"
# guided decoding (qwen_triton/guided.py): one of GUIDE_TYPES and its text, on the entry points and the engine
GUIDE_TYPE, GUIDE = GUIDE_TYPE_FIELD, GUIDE_FIELD
TEXT_OUTPUT = "text_output"

_ENTRY_HEAD = (
    # upstream requires text_input; ours accepts `messages` instead (see DIFFERENCES)
    _t(TEXT_INPUT, "BYTES"),
    _t(DECODER_TEXT_INPUT, "BYTES", no=_ENCDEC),
)
_ENTRY_SAMPLING = (
    _t(MAX_TOKENS, "INT32", opt=False),
    _t(BAD_WORDS, "BYTES", -1), _t(STOP_WORDS, "BYTES", -1), _t(EXCLUDE_INPUT_IN_OUTPUT, "BOOL"),
    _t(END_ID, "INT32"), _t(PAD_ID, "INT32"), _t(TOP_K, "INT32"), _t(TOP_P, "FP32"), _t(TEMPERATURE, "FP32"),
    _t(LENGTH_PENALTY, "FP32"), _t(REPETITION_PENALTY, "FP32"), _t(MIN_LENGTH, "INT32"),
    _t(PRESENCE_PENALTY, "FP32"), _t(FREQUENCY_PENALTY, "FP32"), _t(RANDOM_SEED, "UINT64"),
)
ENSEMBLE_INPUTS = _ENTRY_HEAD + (
    _t(MAX_TOKENS, "INT32", opt=False),
    _t(NUM_RETURN_SEQUENCES, "INT32"),
) + _ENTRY_SAMPLING[1:] + (
    _t(RETURN_LOG_PROBS, "BOOL"), _t(RETURN_CONTEXT_LOGITS, "BOOL"), _t(RETURN_GENERATION_LOGITS, "BOOL"),
    _t(RETURN_PERF_METRICS, "BOOL"), _t(BEAM_WIDTH, "INT32"), _t(STREAM, "BOOL"),
    _t("prompt_embedding_table", "FP16", -1, -1, no=_PTUNE), _t("prompt_table_extra_id", "UINT64", no=_PTUNE),
    _t("prompt_vocab_size", "INT32", no=_PTUNE),
    _t(EMBEDDING_BIAS_WORDS, "BYTES", -1), _t(EMBEDDING_BIAS_WEIGHTS, "FP32", -1),
    _t("lora_task_id", "UINT64", no=_LORA), _t("lora_weights", "FP16", -1, -1, ragged=True, no=_LORA),
    _t("lora_config", "INT32", -1, 3, ragged=True, no=_LORA),
    _t(GUIDE_TYPE, "BYTES", ragged=True), _t(GUIDE, "BYTES", ragged=True),
    _t(MESSAGES, "BYTES"),  # ours
)
BLS_INPUTS = _ENTRY_HEAD + (
    _t("image_input", "FP16", -1, 3, -1, -1, no=_MM), _t("image_bytes_input", "UINT8", -1, -1, -1, -1, no=_MM),
    _t("image_url_input", "BYTES", no=_MM), _t("video_bytes_input", "UINT8", -1, -1, -1, -1, no=_MM),
) + _ENTRY_SAMPLING + (
    _t(RETURN_LOG_PROBS, "BOOL", scalar=True), _t(RETURN_CONTEXT_LOGITS, "BOOL", scalar=True),
    _t(RETURN_GENERATION_LOGITS, "BOOL", scalar=True), _t(NUM_RETURN_SEQUENCES, "INT32", scalar=True),
    _t(BEAM_WIDTH, "INT32"), _t(STREAM, "BOOL"),
    _t("prompt_embedding_table", "FP16", -1, -1, no=_PTUNE), _t("prompt_vocab_size", "INT32", no=_PTUNE),
    _t("prompt_table_extra_id", "UINT64", no=_PTUNE),
    _t(EMBEDDING_BIAS_WORDS, "BYTES", -1), _t(EMBEDDING_BIAS_WEIGHTS, "FP32", -1),
    _t("num_draft_tokens", "INT32", no=_DRAFT), _t("use_draft_logits", "BOOL", scalar=True, no=_DRAFT),
    _t("lora_task_id", "UINT64", scalar=True, no=_LORA), _t("lora_weights", "FP16", -1, -1, ragged=True, no=_LORA),
    _t("lora_config", "INT32", -1, 3, ragged=True, no=_LORA),
    _t(RETURN_PERF_METRICS, "BOOL", scalar=True), _t(GUIDE_TYPE, "BYTES"), _t(GUIDE, "BYTES"),
    _t(MESSAGES, "BYTES"),  # ours
)

# Per-request performance outputs (return_perf_metrics), engine and entry points alike.
KV_NEW_BLOCKS = "kv_cache_alloc_new_blocks"
KV_REUSED_BLOCKS = "kv_cache_reused_blocks"
KV_TOTAL_BLOCKS = "kv_cache_alloc_total_blocks"
ARRIVAL_TIME = "arrival_time_ns"
FIRST_SCHEDULED_TIME = "first_scheduled_time_ns"
FIRST_TOKEN_TIME = "first_token_time_ns"
LAST_TOKEN_TIME = "last_token_time_ns"
ACCEPTANCE_RATE = "acceptance_rate"
ACCEPTED_DRAFT_TOKENS = "total_accepted_draft_tokens"
DRAFT_TOKENS = "total_draft_tokens"
PERF_OUTPUTS = (
    _t(KV_NEW_BLOCKS, "INT32"), _t(KV_REUSED_BLOCKS, "INT32"), _t(KV_TOTAL_BLOCKS, "INT32"),
    _t(ARRIVAL_TIME, "INT64"), _t(FIRST_SCHEDULED_TIME, "INT64"), _t(FIRST_TOKEN_TIME, "INT64"),
    _t(LAST_TOKEN_TIME, "INT64"), _t(ACCEPTANCE_RATE, "FP32"), _t(ACCEPTED_DRAFT_TOKENS, "INT32"),
    _t(DRAFT_TOKENS, "INT32"),
)
CUM_LOG_PROBS = "cum_log_probs"
OUTPUT_LOG_PROBS = "output_log_probs"
CONTEXT_LOGITS = "context_logits"
GENERATION_LOGITS = "generation_logits"
BATCH_INDEX = "batch_index"
SEQUENCE_INDEX = "sequence_index"
# outputs the engine model and the entry points share
_COMMON_OUTPUTS = (
    _t(CUM_LOG_PROBS, "FP32", -1), _t(OUTPUT_LOG_PROBS, "FP32", -1, -1), _t(CONTEXT_LOGITS, LOGITS, -1, -1),
    _t(GENERATION_LOGITS, LOGITS, -1, -1, -1), _t(BATCH_INDEX, "INT32"), _t(SEQUENCE_INDEX, "INT32"),
)
ENSEMBLE_OUTPUTS = (_t(TEXT_OUTPUT, "BYTES", -1),) + _COMMON_OUTPUTS + PERF_OUTPUTS
BLS_OUTPUTS = ENSEMBLE_OUTPUTS

# -- preprocessing ------------------------------------------------------------------------------------
PRE_QUERY = "QUERY"
PRE_DECODER_QUERY = "DECODER_QUERY"
PRE_MESSAGES = "MESSAGES"  # ours
PRE_REQUEST_OUTPUT_LEN = "REQUEST_OUTPUT_LEN"
PRE_BAD_WORDS_DICT = "BAD_WORDS_DICT"
PRE_STOP_WORDS_DICT = "STOP_WORDS_DICT"
PRE_EMBEDDING_BIAS_WORDS = "EMBEDDING_BIAS_WORDS"
PRE_EMBEDDING_BIAS_WEIGHTS = "EMBEDDING_BIAS_WEIGHTS"
PRE_END_ID = "END_ID"
PRE_PAD_ID = "PAD_ID"
PRE_INPUT_ID = "INPUT_ID"
PRE_REQUEST_INPUT_LEN = "REQUEST_INPUT_LEN"
PRE_DECODER_INPUT_ID = "DECODER_INPUT_ID"
PRE_REQUEST_DECODER_INPUT_LEN = "REQUEST_DECODER_INPUT_LEN"
PRE_OUT_REQUEST_OUTPUT_LEN = "REQUEST_OUTPUT_LEN"  # same name in and out, as upstream
PRE_STOP_WORDS_IDS = "STOP_WORDS_IDS"
PRE_BAD_WORDS_IDS = "BAD_WORDS_IDS"
PRE_EMBEDDING_BIAS = "EMBEDDING_BIAS"
PRE_OUT_END_ID = "OUT_END_ID"
PRE_OUT_PAD_ID = "OUT_PAD_ID"
PRE_OUT_PROMPT_TABLE_EXTRA_IDS = "OUT_PROMPT_TABLE_EXTRA_IDS"

PREPROCESSING_INPUTS = (
    _t(PRE_QUERY, "BYTES"),  # upstream: required (ours: or MESSAGES)
    _t(PRE_DECODER_QUERY, "BYTES", no=_ENCDEC),
    _t("IMAGE_BYTES", "UINT8", -1, -1, -1, -1, no=_MM), _t("IMAGE_URL", "BYTES", no=_MM),
    _t("VIDEO_BYTES", "UINT8", -1, -1, -1, -1, no=_MM),
    _t(PRE_REQUEST_OUTPUT_LEN, "INT32", opt=False),
    _t(PRE_BAD_WORDS_DICT, "BYTES", -1), _t(PRE_STOP_WORDS_DICT, "BYTES", -1),
    _t(PRE_EMBEDDING_BIAS_WORDS, "BYTES", -1), _t(PRE_EMBEDDING_BIAS_WEIGHTS, "FP32", -1),
    _t(PRE_END_ID, "INT32"), _t(PRE_PAD_ID, "INT32"), _t("PROMPT_TABLE_EXTRA_ID", "UINT64", no=_PTUNE),
    _t(PRE_MESSAGES, "BYTES"),  # ours
)
PREPROCESSING_OUTPUTS = (
    _t(PRE_INPUT_ID, "INT32", -1), _t(PRE_REQUEST_INPUT_LEN, "INT32"), _t(PRE_DECODER_INPUT_ID, "INT32", -1),
    _t(PRE_REQUEST_DECODER_INPUT_LEN, "INT32"), _t(PRE_BAD_WORDS_IDS, "INT32", 2, -1),
    _t(PRE_STOP_WORDS_IDS, "INT32", 2, -1), _t(PRE_EMBEDDING_BIAS, "FP32", -1),
    _t(PRE_OUT_REQUEST_OUTPUT_LEN, "INT32", -1), _t(PRE_OUT_END_ID, "INT32"), _t(PRE_OUT_PAD_ID, "INT32"),
    _t(PRE_OUT_PROMPT_TABLE_EXTRA_IDS, "UINT64", -1),
)

# -- the engine model (tensorrtllm_backend's tensorrt_llm model) ----------------------------------------
IN_INPUT_IDS = "input_ids"
IN_INPUT_LENGTHS = "input_lengths"
IN_REQUEST_OUTPUT_LEN = "request_output_len"
IN_NUM_RETURN_SEQUENCES = "num_return_sequences"
IN_DECODER_INPUT_IDS = "decoder_input_ids"
IN_DECODER_INPUT_LENGTHS = "decoder_input_lengths"
IN_END_ID = "end_id"
IN_PAD_ID = "pad_id"
IN_STOP_WORDS = "stop_words_list"
IN_BAD_WORDS = "bad_words_list"
IN_EMBEDDING_BIAS = "embedding_bias"
IN_BEAM_WIDTH = "beam_width"
IN_TEMPERATURE = "temperature"
IN_TOP_K = "runtime_top_k"
IN_TOP_P = "runtime_top_p"
IN_LEN_PENALTY = "len_penalty"
IN_EARLY_STOPPING = "early_stopping"
IN_REPETITION_PENALTY = "repetition_penalty"
IN_MIN_LENGTH = "min_length"
IN_BEAM_DIVERSITY = "beam_search_diversity_rate"
IN_PRESENCE_PENALTY = "presence_penalty"
IN_FREQUENCY_PENALTY = "frequency_penalty"
IN_RANDOM_SEED = "random_seed"
IN_RETURN_LOG_PROBS = "return_log_probs"
IN_RETURN_CONTEXT_LOGITS = "return_context_logits"
IN_RETURN_GENERATION_LOGITS = "return_generation_logits"
IN_RETURN_PERF_METRICS = "return_perf_metrics"
IN_EXCLUDE_INPUT = "exclude_input_in_output"
IN_STOP = "stop"
IN_STREAMING = "streaming"
OUT_OUTPUT_IDS = "output_ids"
OUT_SEQUENCE_LENGTH = "sequence_length"
# ours: how the engine fails a request after its acknowledgement (REQUEST_PARAM_ACK), as JSON
# {"code": Triton error code name, "message": ...}: Triton 2.51's Python backend drops an error response
# that follows the first response of a BLS stream (it saves no request id with it): the caller would wait
OUT_ERROR = "qwen_triton_error"
# ours: k (0..20) most probable tokens at each output position, from the distribution output_log_probs comes
# from (SamplingParams.top_logprobs; needs return_log_probs); outputs [beam, tokens, k], only when k > 0
IN_TOP_LOGPROBS, OUT_TOP_IDS, OUT_TOP_LOGPROBS = ("qwen_triton_top_logprobs", "qwen_triton_top_logprob_ids",
                                                  "qwen_triton_top_logprob_values")
OURS_ONLY = (OUT_ERROR, IN_TOP_LOGPROBS, OUT_TOP_IDS, OUT_TOP_LOGPROBS)  # the C++ engine model has none of these

ENGINE_INPUTS = (
    _t(IN_INPUT_IDS, "INT32", -1, ragged=True),  # optional upstream (encoder models); required by ours
    _t("encoder_input_features", "FP16", -1, -1, ragged=True, no=_ENCDEC),
    _t("encoder_output_lengths", "INT32", scalar=True, no=_ENCDEC),
    _t(IN_INPUT_LENGTHS, "INT32", opt=False, scalar=True),
    _t(IN_REQUEST_OUTPUT_LEN, "INT32", opt=False, scalar=True),
    _t(IN_NUM_RETURN_SEQUENCES, "INT32", scalar=True),
    _t("draft_input_ids", "INT32", -1, ragged=True, no=_DRAFT),
    _t(IN_DECODER_INPUT_IDS, "INT32", -1, ragged=True), _t(IN_DECODER_INPUT_LENGTHS, "INT32", scalar=True),
    _t("draft_logits", LOGITS, -1, -1, ragged=True, no=_DRAFT),
    _t("draft_acceptance_threshold", "FP32", scalar=True, no=_DRAFT),
    _t(IN_END_ID, "INT32", scalar=True), _t(IN_PAD_ID, "INT32", scalar=True),
    _t(IN_STOP_WORDS, "INT32", 2, -1, ragged=True), _t(IN_BAD_WORDS, "INT32", 2, -1, ragged=True),
    _t(IN_EMBEDDING_BIAS, "FP32", -1, ragged=True),
    _t(IN_BEAM_WIDTH, "INT32", scalar=True), _t(IN_TEMPERATURE, "FP32", scalar=True),
    _t(IN_TOP_K, "INT32", scalar=True), _t(IN_TOP_P, "FP32", scalar=True),
    _t("runtime_top_p_min", "FP32", scalar=True, no=_TOP_P_DECAY),
    _t("runtime_top_p_decay", "FP32", scalar=True, no=_TOP_P_DECAY),
    _t("runtime_top_p_reset_ids", "INT32", scalar=True, no=_TOP_P_DECAY),
    _t(IN_LEN_PENALTY, "FP32", scalar=True), _t(IN_EARLY_STOPPING, "BOOL", scalar=True),
    _t(IN_REPETITION_PENALTY, "FP32", scalar=True), _t(IN_MIN_LENGTH, "INT32", scalar=True),
    _t(IN_BEAM_DIVERSITY, "FP32", scalar=True, no=_BEAM),
    _t(IN_PRESENCE_PENALTY, "FP32", scalar=True), _t(IN_FREQUENCY_PENALTY, "FP32", scalar=True),
    _t(IN_RANDOM_SEED, "UINT64", scalar=True), _t(IN_RETURN_LOG_PROBS, "BOOL", scalar=True),
    _t(IN_RETURN_CONTEXT_LOGITS, "BOOL", scalar=True), _t(IN_RETURN_GENERATION_LOGITS, "BOOL", scalar=True),
    _t(IN_RETURN_PERF_METRICS, "BOOL", scalar=True), _t(IN_EXCLUDE_INPUT, "BOOL", scalar=True),
    _t(IN_STOP, "BOOL", scalar=True), _t(IN_STREAMING, "BOOL", scalar=True),
    _t("prompt_embedding_table", "FP16", -1, -1, ragged=True, no=_PTUNE),
    _t("prompt_table_extra_ids", "UINT64", -1, ragged=True, no=_PTUNE),
    _t("prompt_vocab_size", "INT32", scalar=True, no=_PTUNE),
    _t("cross_attention_mask", "BOOL", -1, -1, ragged=True, no=_MM),
    _t("mrope_rotary_cos_sin", "FP32", -1, no=_MM), _t("mrope_position_deltas", "INT64", no=_MM),
    _t("lora_task_id", "UINT64", scalar=True, no=_LORA), _t("lora_weights", "FP16", -1, -1, ragged=True, no=_LORA),
    _t("lora_config", "INT32", -1, 3, ragged=True, no=_LORA),
    _t("context_phase_params", "UINT8", -1, ragged=True, no=_DISAGG),
    _t("skip_cross_attn_blocks", "BOOL", ragged=True, no=_MM),
    _t("retention_token_range_starts", "INT32", -1, ragged=True, no=_RETENTION),
    _t("retention_token_range_ends", "INT32", -1, ragged=True, no=_RETENTION),
    _t("retention_token_range_priorities", "INT32", -1, ragged=True, no=_RETENTION),
    _t("retention_token_range_durations_ms", "INT32", -1, ragged=True, no=_RETENTION),
    _t("retention_decode_priority", "INT32", ragged=True, no=_RETENTION),
    _t("retention_decode_duration_ms", "INT32", ragged=True, no=_RETENTION),
    _t(GUIDE_TYPE, "BYTES", ragged=True), _t(GUIDE, "BYTES", ragged=True),
    _t("lookahead_window_size", "INT32", ragged=True, no=_LOOKAHEAD),
    _t("lookahead_ngram_size", "INT32", ragged=True, no=_LOOKAHEAD),
    _t("lookahead_verification_set_size", "INT32", ragged=True, no=_LOOKAHEAD),
    _t(IN_TOP_LOGPROBS, "INT32", scalar=True),
)
ENGINE_OUTPUTS = (_t(OUT_OUTPUT_IDS, "INT32", -1, -1), _t(OUT_SEQUENCE_LENGTH, "INT32", -1)) + _COMMON_OUTPUTS \
    + PERF_OUTPUTS + (_t(OUT_ERROR, "BYTES", 1), _t(OUT_TOP_IDS, "INT32", -1, -1, -1),
                      _t(OUT_TOP_LOGPROBS, "FP32", -1, -1, -1))

# -- postprocessing ------------------------------------------------------------------------------------
POST_TOKENS_BATCH = "TOKENS_BATCH"
POST_SEQUENCE_LENGTH = "SEQUENCE_LENGTH"
POST_OUTPUT = "OUTPUT"

POSTPROCESSING_INPUTS = (_t(POST_TOKENS_BATCH, "INT32", -1, -1, opt=False),
                         _t(POST_SEQUENCE_LENGTH, "INT32", -1, opt=False))
POSTPROCESSING_OUTPUTS = (_t(POST_OUTPUT, "BYTES", -1),)

MODEL_SPECS = {
    PREPROCESSING: (PREPROCESSING_INPUTS, PREPROCESSING_OUTPUTS),
    ENGINE: (ENGINE_INPUTS, ENGINE_OUTPUTS),
    POSTPROCESSING: (POSTPROCESSING_INPUTS, POSTPROCESSING_OUTPUTS),
    ENSEMBLE: (ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS),
    BLS: (BLS_INPUTS, BLS_OUTPUTS),
}

# -- the pipeline the entry points run: upstream's ensemble_scheduling, as
# (model, {model input: pipeline tensor}, {model output: pipeline tensor}); internal tensors start with "_" --
PIPELINE_STEPS = (
    (PREPROCESSING,
     {PRE_QUERY: TEXT_INPUT, PRE_DECODER_QUERY: DECODER_TEXT_INPUT, PRE_MESSAGES: MESSAGES,
      PRE_REQUEST_OUTPUT_LEN: MAX_TOKENS, PRE_BAD_WORDS_DICT: BAD_WORDS, PRE_STOP_WORDS_DICT: STOP_WORDS,
      PRE_EMBEDDING_BIAS_WORDS: EMBEDDING_BIAS_WORDS, PRE_EMBEDDING_BIAS_WEIGHTS: EMBEDDING_BIAS_WEIGHTS,
      PRE_END_ID: END_ID, PRE_PAD_ID: PAD_ID, "PROMPT_TABLE_EXTRA_ID": "prompt_table_extra_id"},
     {PRE_INPUT_ID: "_INPUT_ID", PRE_REQUEST_INPUT_LEN: "_REQUEST_INPUT_LEN",
      PRE_DECODER_INPUT_ID: "_DECODER_INPUT_ID", PRE_REQUEST_DECODER_INPUT_LEN: "_REQUEST_DECODER_INPUT_LEN",
      PRE_OUT_REQUEST_OUTPUT_LEN: "_REQUEST_OUTPUT_LEN", PRE_STOP_WORDS_IDS: "_STOP_WORDS_IDS",
      PRE_BAD_WORDS_IDS: "_BAD_WORDS_IDS", PRE_EMBEDDING_BIAS: "_EMBEDDING_BIAS", PRE_OUT_END_ID: "_END_ID",
      PRE_OUT_PAD_ID: "_PAD_ID", PRE_OUT_PROMPT_TABLE_EXTRA_IDS: "_OUT_PROMPT_TABLE_EXTRA_IDS"}),
    (ENGINE,
     {IN_INPUT_IDS: "_INPUT_ID", IN_DECODER_INPUT_IDS: "_DECODER_INPUT_ID", IN_INPUT_LENGTHS: "_REQUEST_INPUT_LEN",
      IN_DECODER_INPUT_LENGTHS: "_REQUEST_DECODER_INPUT_LEN", IN_EXCLUDE_INPUT: EXCLUDE_INPUT_IN_OUTPUT,
      IN_REQUEST_OUTPUT_LEN: "_REQUEST_OUTPUT_LEN", IN_END_ID: "_END_ID", IN_PAD_ID: "_PAD_ID",
      IN_EMBEDDING_BIAS: "_EMBEDDING_BIAS", IN_TOP_K: TOP_K, IN_TOP_P: TOP_P, IN_TEMPERATURE: TEMPERATURE,
      IN_LEN_PENALTY: LENGTH_PENALTY, IN_REPETITION_PENALTY: REPETITION_PENALTY, IN_MIN_LENGTH: MIN_LENGTH,
      IN_PRESENCE_PENALTY: PRESENCE_PENALTY, IN_FREQUENCY_PENALTY: FREQUENCY_PENALTY, IN_RANDOM_SEED: RANDOM_SEED,
      IN_RETURN_LOG_PROBS: RETURN_LOG_PROBS, IN_RETURN_CONTEXT_LOGITS: RETURN_CONTEXT_LOGITS,
      IN_RETURN_GENERATION_LOGITS: RETURN_GENERATION_LOGITS, IN_RETURN_PERF_METRICS: RETURN_PERF_METRICS,
      IN_NUM_RETURN_SEQUENCES: NUM_RETURN_SEQUENCES, IN_BEAM_WIDTH: BEAM_WIDTH, IN_STREAMING: STREAM,
      "prompt_embedding_table": "prompt_embedding_table", "prompt_vocab_size": "prompt_vocab_size",
      IN_STOP_WORDS: "_STOP_WORDS_IDS", IN_BAD_WORDS: "_BAD_WORDS_IDS",
      "prompt_table_extra_ids": "_OUT_PROMPT_TABLE_EXTRA_IDS", "lora_task_id": "lora_task_id",
      "lora_weights": "lora_weights", "lora_config": "lora_config",
      GUIDE_TYPE: GUIDE_TYPE, GUIDE: GUIDE},
     {OUT_OUTPUT_IDS: "_TOKENS_BATCH", OUT_SEQUENCE_LENGTH: "_SEQUENCE_LENGTH",
      **{spec.name: spec.name for spec in _COMMON_OUTPUTS + PERF_OUTPUTS}}),
    (POSTPROCESSING,
     {POST_TOKENS_BATCH: "_TOKENS_BATCH", POST_SEQUENCE_LENGTH: "_SEQUENCE_LENGTH"},
     {POST_OUTPUT: TEXT_OUTPUT}),
)

# -- where we differ from upstream on purpose: (model, "input"|"output"|"model", name) -> why ---------------
_ENTRY_TEXT = "optional: a request may send chat `messages` instead (ours); one of the two is required"
DIFFERENCES = {
    (ENSEMBLE, "model", "platform"): "served by the BLS code (backend python, decoupled like the engine) instead of "
        "platform ensemble: Triton 2.51's ensemble scheduler does not pass a client's cancellation to a step "
        "already running (server#6739), so a cancelled or disconnected stream would generate to max_tokens",
    (ENSEMBLE, "input", TEXT_INPUT): _ENTRY_TEXT,
    (BLS, "input", TEXT_INPUT): _ENTRY_TEXT,
    (PREPROCESSING, "input", PRE_QUERY): "optional: MESSAGES may be sent instead (ours)",
    (ENSEMBLE, "input", MESSAGES): "ours: chat messages rendered with the checkpoint's chat template",
    (BLS, "input", MESSAGES): "ours: chat messages rendered with the checkpoint's chat template",
    (PREPROCESSING, "input", PRE_MESSAGES): "ours: chat messages rendered with the checkpoint's chat template",
    (ENSEMBLE, "output", "kv_cache_alloc_total_blocks (listed twice)"): "upstream's ensemble lists this output "
        "twice; once here",
    (ENGINE, "output", "context_phase_params"): "left out: disaggregated serving is not supported",
    (ENGINE, "output", OUT_ERROR): "ours, sent only to requests with the qwen_triton_ack "
        "parameter: how a request fails after its first response, which Triton 2.51's Python backend would "
        "lose as an error response inside a BLS stream",
    **{(ENGINE, kind, name): "ours: top log probabilities (OpenAI's top_logprobs); TensorRT-LLM returns none"
       for kind, name in (("input", IN_TOP_LOGPROBS), ("output", OUT_TOP_IDS), ("output", OUT_TOP_LOGPROBS))},
    **{(PREPROCESSING, "output", name): "left out: the models served are text-only (multimodal output)"
       for name in ("PIXEL_VALUES", "ASPECT_RATIO_IDS", "ASPECT_RATIO_MASK", "CROSS_ATTENTION_MASK", "IMAGE_SIZES",
                    "IS_VIDEO_INPUT", "ATTENTION_MASK", "IMAGE_GRID_THW", "VISION_INPUT_ID")},
}

# -- the engine's gauges on the metrics port, named and labelled as the C++ backend's: dashboards work for both --
METRIC_REQUESTS = "nv_trt_llm_request_metrics"  # request_type: active|max|scheduled|context|waiting
METRIC_KV_BLOCKS = "nv_trt_llm_kv_cache_block_metrics"  # kv_cache_block_type: max|free|used|tokens_per|...
# ours, label counter: steps|preemptions|generated_tokens|max_batch_seen, and requests
# admitted|finished|aborted|failed|rejected (admitted = finished + aborted + failed + in flight)
METRIC_ENGINE = "qwen_triton_engine"
# ours, typed for Prometheus (serving/engine_metrics.py): counters (rate() them), a gauge, latency histograms
METRIC_GENERATION_TOKENS = "qwen_triton_generation_tokens_total"  # counter: tokens the engine generated
METRIC_PREFIX_QUERIES = "qwen_triton_prefix_cache_queries_total"  # counter: prompt tokens looked up in the cache
METRIC_PREFIX_HITS = "qwen_triton_prefix_cache_hits_total"  # counter: of those, tokens whose KV was reused
METRIC_PREFIX_BLOCKS = "qwen_triton_prefix_cache_blocks"  # gauge: free KV blocks that still hold a prefix
METRIC_TTFT = "qwen_triton_time_to_first_token_seconds"  # histogram: engine arrival -> first token
METRIC_ITL = "qwen_triton_inter_token_latency_seconds"  # histogram: a request's mean gap between tokens

# -- config.pbtxt `parameters` our Python models read (paths: absolute, or relative to the repository's root) --
PARAM_TOKENIZER_DIR = "tokenizer_dir"  # preprocessing, engine, postprocessing, entry points
PARAM_MODEL_PATH = "gpt_model_path"  # engine: the checkpoint folder (upstream name)
PARAM_ENGINE_CONFIG = "engine_config"  # engine: JSON object of qwen_triton.EngineConfig fields
PARAM_EXCLUDE_INPUT = "exclude_input_in_output"  # engine: default when a request does not say (upstream: false)
PARAM_CANCEL_PERIOD_MS = "cancellation_check_period_ms"  # engine: how often cancellation is polled
PARAM_DEFAULT_SYSTEM = "default_system_prompt"  # preprocessing: system prompt for chat messages
PARAM_MAX_INPUT_LEN = "max_input_len"  # preprocessing: longest prompt in tokens
PARAM_MAX_OUTPUT_LEN = "max_output_len"  # preprocessing: most tokens one request may ask for
PARAM_SKIP_SPECIAL = "skip_special_tokens"  # postprocessing ("true")
PARAM_ENGINE_MODEL = "tensorrt_llm_model_name"  # entry points: the engine model they call (upstream name)
PARAM_MAX_REQUESTS = "max_concurrent_requests"  # entry points: requests served at once (more wait their turn)
PARAM_ENGINE_LINK = "engine_link"  # entry points: "true" when the engine is ours: reached over the engine link

# -- request parameters (Triton's per-request `parameters`) our engine model reads. --
# a client of a decoupled engine model (a BLS caller) asks for an empty response at once: a BLS call holds
# one of the Python backend's 32 parent threads per instance until the called model's first response.
# Our entry models used it before the engine link (serving/link_*.py).
REQUEST_PARAM_ACK = "qwen_triton_ack"
