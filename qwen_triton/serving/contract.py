"""The tensor contract of the model repository, defined once.

The build step renders every config.pbtxt from these specs, the Triton models
read and write tensors by these names, and the clients and load tests send
them. The names keep the client-facing contract of NVIDIA's tensorrtllm_backend
(inflight_batcher_llm), so the same ensemble serves either engine; what we add
is marked "ours".

Every model is batched (max_batch_size > 0), so each tensor carries a leading
batch dimension in front of the dims given here. Plain Python: no Triton, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

# Model names in the repository.
PREPROCESSING = "preprocessing"
ENGINE = "tensorrt_llm"  # the upstream name, kept so clients of it work unchanged
POSTPROCESSING = "postprocessing"
ENSEMBLE = "ensemble"
BLS = "tensorrt_llm_bls"  # the ensemble's interface in code: forwards cancellation to the engine


@dataclass(frozen=True)
class TensorSpec:
    """One input or output. dtype is Triton's name without TYPE_ (INT32, FP32,
    BOOL, UINT64, BYTES for strings); reshape=() marks a scalar that the model
    sees without its trailing [1]."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False
    reshape: tuple[int, ...] | None = None


def _scalar(name: str, dtype: str, optional: bool = True) -> TensorSpec:
    return TensorSpec(name, dtype, (1,), optional, reshape=())


# -- ensemble: the public entry point -----------------------------------------
TEXT_INPUT = "text_input"
MESSAGES = "messages"  # ours: a JSON list of {"role", "content"} rendered with the chat template
MAX_TOKENS = "max_tokens"
BAD_WORDS = "bad_words"
STOP_WORDS = "stop_words"
END_ID = "end_id"
PAD_ID = "pad_id"
TOP_K = "top_k"
TOP_P = "top_p"
TEMPERATURE = "temperature"
LENGTH_PENALTY = "length_penalty"
REPETITION_PENALTY = "repetition_penalty"
PRESENCE_PENALTY = "presence_penalty"
FREQUENCY_PENALTY = "frequency_penalty"
MIN_TOKENS = "min_tokens"
SEED = "seed"
BEAM_WIDTH = "beam_width"
NUM_RETURN_SEQUENCES = "num_return_sequences"
STREAM = "stream"
EXCLUDE_INPUT_IN_OUTPUT = "exclude_input_in_output"
RETURN_LOG_PROBS = "return_log_probs"
RETURN_CONTEXT_LOGITS = "return_context_logits"
RETURN_GENERATION_LOGITS = "return_generation_logits"
TEXT_OUTPUT = "text_output"
CUM_LOG_PROBS = "cum_log_probs"
OUTPUT_LOG_PROBS = "output_log_probs"
BATCH_INDEX = "batch_index"
SEQUENCE_INDEX = "sequence_index"

ENSEMBLE_INPUTS = (
    # upstream requires text_input; ours accepts `messages` instead, and
    # preprocessing answers a clear error when neither is given
    TensorSpec(TEXT_INPUT, "BYTES", (1,), optional=True),
    TensorSpec(MESSAGES, "BYTES", (1,), optional=True),
    TensorSpec(MAX_TOKENS, "INT32", (1,)),
    TensorSpec(BAD_WORDS, "BYTES", (-1,), optional=True),
    TensorSpec(STOP_WORDS, "BYTES", (-1,), optional=True),
    TensorSpec(END_ID, "INT32", (1,), optional=True),
    TensorSpec(PAD_ID, "INT32", (1,), optional=True),
    TensorSpec(TOP_K, "INT32", (1,), optional=True),
    TensorSpec(TOP_P, "FP32", (1,), optional=True),
    TensorSpec(TEMPERATURE, "FP32", (1,), optional=True),
    TensorSpec(LENGTH_PENALTY, "FP32", (1,), optional=True),
    TensorSpec(REPETITION_PENALTY, "FP32", (1,), optional=True),
    TensorSpec(PRESENCE_PENALTY, "FP32", (1,), optional=True),
    TensorSpec(FREQUENCY_PENALTY, "FP32", (1,), optional=True),
    TensorSpec(MIN_TOKENS, "INT32", (1,), optional=True),
    TensorSpec(SEED, "UINT64", (1,), optional=True),
    TensorSpec(BEAM_WIDTH, "INT32", (1,), optional=True),
    TensorSpec(NUM_RETURN_SEQUENCES, "INT32", (1,), optional=True),
    TensorSpec(STREAM, "BOOL", (1,), optional=True),
    TensorSpec(EXCLUDE_INPUT_IN_OUTPUT, "BOOL", (1,), optional=True),
    TensorSpec(RETURN_LOG_PROBS, "BOOL", (1,), optional=True),
    TensorSpec(RETURN_CONTEXT_LOGITS, "BOOL", (1,), optional=True),
    TensorSpec(RETURN_GENERATION_LOGITS, "BOOL", (1,), optional=True),
)
ENSEMBLE_OUTPUTS = (
    TensorSpec(TEXT_OUTPUT, "BYTES", (-1,)),
    TensorSpec(CUM_LOG_PROBS, "FP32", (-1,)),
    TensorSpec(OUTPUT_LOG_PROBS, "FP32", (-1, -1)),
    TensorSpec(BATCH_INDEX, "INT32", (1,)),
    TensorSpec(SEQUENCE_INDEX, "INT32", (1,)),
)

# -- preprocessing ---------------------------------------------------------------
PRE_QUERY = "QUERY"
PRE_MESSAGES = "MESSAGES"  # ours
PRE_REQUEST_OUTPUT_LEN = "REQUEST_OUTPUT_LEN"
PRE_BAD_WORDS_DICT = "BAD_WORDS_DICT"
PRE_STOP_WORDS_DICT = "STOP_WORDS_DICT"
PRE_END_ID = "END_ID"
PRE_PAD_ID = "PAD_ID"
PRE_INPUT_ID = "INPUT_ID"
PRE_REQUEST_INPUT_LEN = "REQUEST_INPUT_LEN"
PRE_OUT_REQUEST_OUTPUT_LEN = "REQUEST_OUTPUT_LEN"  # same name in and out, as upstream
PRE_STOP_WORDS_IDS = "STOP_WORDS_IDS"
PRE_BAD_WORDS_IDS = "BAD_WORDS_IDS"
PRE_OUT_END_ID = "OUT_END_ID"
PRE_OUT_PAD_ID = "OUT_PAD_ID"

PREPROCESSING_INPUTS = (
    TensorSpec(PRE_QUERY, "BYTES", (1,), optional=True),
    TensorSpec(PRE_MESSAGES, "BYTES", (1,), optional=True),
    TensorSpec(PRE_REQUEST_OUTPUT_LEN, "INT32", (1,)),
    TensorSpec(PRE_BAD_WORDS_DICT, "BYTES", (-1,), optional=True),
    TensorSpec(PRE_STOP_WORDS_DICT, "BYTES", (-1,), optional=True),
    TensorSpec(PRE_END_ID, "INT32", (1,), optional=True),
    TensorSpec(PRE_PAD_ID, "INT32", (1,), optional=True),
)
PREPROCESSING_OUTPUTS = (
    TensorSpec(PRE_INPUT_ID, "INT32", (-1,)),
    TensorSpec(PRE_REQUEST_INPUT_LEN, "INT32", (1,)),
    TensorSpec(PRE_OUT_REQUEST_OUTPUT_LEN, "INT32", (1,)),
    TensorSpec(PRE_STOP_WORDS_IDS, "INT32", (2, -1)),
    TensorSpec(PRE_BAD_WORDS_IDS, "INT32", (2, -1)),
    TensorSpec(PRE_OUT_END_ID, "INT32", (1,)),
    TensorSpec(PRE_OUT_PAD_ID, "INT32", (1,)),
)

# -- the engine model (same names as tensorrtllm_backend's tensorrt_llm model) ----
IN_INPUT_IDS = "input_ids"
IN_INPUT_LENGTHS = "input_lengths"
IN_REQUEST_OUTPUT_LEN = "request_output_len"
IN_END_ID = "end_id"
IN_PAD_ID = "pad_id"
IN_STOP_WORDS = "stop_words_list"
IN_BAD_WORDS = "bad_words_list"
IN_BEAM_WIDTH = "beam_width"
IN_TEMPERATURE = "temperature"
IN_TOP_K = "runtime_top_k"
IN_TOP_P = "runtime_top_p"
IN_LEN_PENALTY = "len_penalty"
IN_REPETITION_PENALTY = "repetition_penalty"
IN_MIN_TOKENS = "min_tokens"
IN_PRESENCE_PENALTY = "presence_penalty"
IN_FREQUENCY_PENALTY = "frequency_penalty"
IN_SEED = "seed"
IN_NUM_RETURN_SEQUENCES = "num_return_sequences"
IN_RETURN_LOG_PROBS = "return_log_probs"
IN_RETURN_CONTEXT_LOGITS = "return_context_logits"
IN_RETURN_GENERATION_LOGITS = "return_generation_logits"
IN_EXCLUDE_INPUT = "exclude_input_in_output"
IN_STOP = "stop"
IN_STREAMING = "streaming"
OUT_OUTPUT_IDS = "output_ids"
OUT_SEQUENCE_LENGTH = "sequence_length"
OUT_CUM_LOG_PROBS = "cum_log_probs"
OUT_OUTPUT_LOG_PROBS = "output_log_probs"
OUT_BATCH_INDEX = "batch_index"
OUT_SEQUENCE_INDEX = "sequence_index"

ENGINE_INPUTS = (
    TensorSpec(IN_INPUT_IDS, "INT32", (-1,)),
    _scalar(IN_INPUT_LENGTHS, "INT32", optional=False),
    _scalar(IN_REQUEST_OUTPUT_LEN, "INT32", optional=False),
    _scalar(IN_END_ID, "INT32"),
    _scalar(IN_PAD_ID, "INT32"),
    TensorSpec(IN_STOP_WORDS, "INT32", (2, -1), optional=True),
    TensorSpec(IN_BAD_WORDS, "INT32", (2, -1), optional=True),
    _scalar(IN_BEAM_WIDTH, "INT32"),
    _scalar(IN_TEMPERATURE, "FP32"),
    _scalar(IN_TOP_K, "INT32"),
    _scalar(IN_TOP_P, "FP32"),
    _scalar(IN_LEN_PENALTY, "FP32"),
    _scalar(IN_REPETITION_PENALTY, "FP32"),
    _scalar(IN_MIN_TOKENS, "INT32"),
    _scalar(IN_PRESENCE_PENALTY, "FP32"),
    _scalar(IN_FREQUENCY_PENALTY, "FP32"),
    _scalar(IN_SEED, "UINT64"),
    _scalar(IN_NUM_RETURN_SEQUENCES, "INT32"),
    _scalar(IN_RETURN_LOG_PROBS, "BOOL"),
    _scalar(IN_RETURN_CONTEXT_LOGITS, "BOOL"),
    _scalar(IN_RETURN_GENERATION_LOGITS, "BOOL"),
    _scalar(IN_EXCLUDE_INPUT, "BOOL"),
    _scalar(IN_STOP, "BOOL"),
    _scalar(IN_STREAMING, "BOOL"),
)
ENGINE_OUTPUTS = (
    TensorSpec(OUT_OUTPUT_IDS, "INT32", (-1, -1)),
    TensorSpec(OUT_SEQUENCE_LENGTH, "INT32", (-1,)),
    TensorSpec(OUT_CUM_LOG_PROBS, "FP32", (-1,)),
    TensorSpec(OUT_OUTPUT_LOG_PROBS, "FP32", (-1, -1)),
    TensorSpec(OUT_BATCH_INDEX, "INT32", (1,)),
    TensorSpec(OUT_SEQUENCE_INDEX, "INT32", (1,)),
)

# -- postprocessing ----------------------------------------------------------------
POST_TOKENS_BATCH = "TOKENS_BATCH"
POST_SEQUENCE_LENGTH = "SEQUENCE_LENGTH"
POST_OUTPUT = "OUTPUT"

POSTPROCESSING_INPUTS = (
    TensorSpec(POST_TOKENS_BATCH, "INT32", (-1, -1)),
    TensorSpec(POST_SEQUENCE_LENGTH, "INT32", (-1,)),
)
POSTPROCESSING_OUTPUTS = (TensorSpec(POST_OUTPUT, "BYTES", (-1,)),)

# -- ensemble wiring: (model, {model input: ensemble tensor}, {model output: ensemble tensor}) --
# Internal tensors are prefixed with "_" so they never collide with public names.
ENSEMBLE_STEPS = (
    (PREPROCESSING,
     {PRE_QUERY: TEXT_INPUT, PRE_MESSAGES: MESSAGES, PRE_REQUEST_OUTPUT_LEN: MAX_TOKENS,
      PRE_BAD_WORDS_DICT: BAD_WORDS, PRE_STOP_WORDS_DICT: STOP_WORDS, PRE_END_ID: END_ID,
      PRE_PAD_ID: PAD_ID},
     {PRE_INPUT_ID: "_INPUT_ID", PRE_REQUEST_INPUT_LEN: "_REQUEST_INPUT_LEN",
      PRE_OUT_REQUEST_OUTPUT_LEN: "_REQUEST_OUTPUT_LEN", PRE_STOP_WORDS_IDS: "_STOP_WORDS_IDS",
      PRE_BAD_WORDS_IDS: "_BAD_WORDS_IDS", PRE_OUT_END_ID: "_END_ID", PRE_OUT_PAD_ID: "_PAD_ID"}),
    (ENGINE,
     {IN_INPUT_IDS: "_INPUT_ID", IN_INPUT_LENGTHS: "_REQUEST_INPUT_LEN",
      IN_REQUEST_OUTPUT_LEN: "_REQUEST_OUTPUT_LEN", IN_STOP_WORDS: "_STOP_WORDS_IDS",
      IN_BAD_WORDS: "_BAD_WORDS_IDS", IN_END_ID: "_END_ID", IN_PAD_ID: "_PAD_ID",
      IN_TOP_K: TOP_K, IN_TOP_P: TOP_P, IN_TEMPERATURE: TEMPERATURE, IN_LEN_PENALTY: LENGTH_PENALTY,
      IN_REPETITION_PENALTY: REPETITION_PENALTY, IN_PRESENCE_PENALTY: PRESENCE_PENALTY,
      IN_FREQUENCY_PENALTY: FREQUENCY_PENALTY, IN_MIN_TOKENS: MIN_TOKENS, IN_SEED: SEED,
      IN_BEAM_WIDTH: BEAM_WIDTH, IN_NUM_RETURN_SEQUENCES: NUM_RETURN_SEQUENCES, IN_STREAMING: STREAM,
      IN_EXCLUDE_INPUT: EXCLUDE_INPUT_IN_OUTPUT, IN_RETURN_LOG_PROBS: RETURN_LOG_PROBS,
      IN_RETURN_CONTEXT_LOGITS: RETURN_CONTEXT_LOGITS,
      IN_RETURN_GENERATION_LOGITS: RETURN_GENERATION_LOGITS},
     {OUT_OUTPUT_IDS: "_TOKENS_BATCH", OUT_SEQUENCE_LENGTH: "_SEQUENCE_LENGTH",
      OUT_CUM_LOG_PROBS: CUM_LOG_PROBS, OUT_OUTPUT_LOG_PROBS: OUTPUT_LOG_PROBS,
      OUT_BATCH_INDEX: BATCH_INDEX, OUT_SEQUENCE_INDEX: SEQUENCE_INDEX}),
    (POSTPROCESSING,
     {POST_TOKENS_BATCH: "_TOKENS_BATCH", POST_SEQUENCE_LENGTH: "_SEQUENCE_LENGTH"},
     {POST_OUTPUT: TEXT_OUTPUT}),
)

MODEL_SPECS = {
    PREPROCESSING: (PREPROCESSING_INPUTS, PREPROCESSING_OUTPUTS),
    ENGINE: (ENGINE_INPUTS, ENGINE_OUTPUTS),
    POSTPROCESSING: (POSTPROCESSING_INPUTS, POSTPROCESSING_OUTPUTS),
    ENSEMBLE: (ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS),
    BLS: (ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS),
}

# -- the engine's own gauges, exported on Triton's metrics port with the C++
# backend's metric names so dashboards and autoscalers work for either engine --
METRIC_REQUESTS = "nv_trt_llm_request_metrics"  # label request_type: active|max|scheduled|context|waiting
METRIC_KV_BLOCKS = "nv_trt_llm_kv_cache_block_metrics"  # label kv_cache_block_type: max|free|used|tokens_per
METRIC_ENGINE = "qwen_triton_engine"  # ours, label counter: steps|preemptions|generated_tokens|max_batch_seen

# -- config.pbtxt `parameters` our Python models read. Paths are absolute or
# relative to the model repository's root, so a built repository can move. --
PARAM_TOKENIZER_DIR = "tokenizer_dir"  # preprocessing, engine, postprocessing
PARAM_MODEL_PATH = "gpt_model_path"  # engine: the checkpoint folder (upstream name)
PARAM_ENGINE_CONFIG = "engine_config"  # engine: JSON object of qwen_triton.EngineConfig fields
PARAM_EXCLUDE_INPUT = "exclude_input_in_output"  # engine: default when a request does not say ("true")
PARAM_CANCEL_PERIOD_MS = "cancellation_check_period_ms"  # engine: how often cancellation is polled
PARAM_DEFAULT_SYSTEM = "default_system_prompt"  # preprocessing: system prompt for chat messages
PARAM_MAX_INPUT_LEN = "max_input_len"  # preprocessing: longest prompt in tokens
PARAM_MAX_OUTPUT_LEN = "max_output_len"  # preprocessing: most tokens one request may ask for
PARAM_SKIP_SPECIAL = "skip_special_tokens"  # postprocessing ("true")
