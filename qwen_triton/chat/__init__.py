"""Chat layer for the CPU pre/postprocessing models: tokenizers, chat templates, streaming
detokenization and stop/bad word lists. Plain Python, no torch."""
from .detokenizer import IncrementalDetokenizer, complete_prefix_len, utf8_incomplete_tail
from .hf_tokenizer import HFTokenizer, HFTokenizerFiles
from .template import (
    CHATML_TEMPLATE,
    DEFAULT_MAX_WINDOW_SIZE,
    DEFAULT_SYSTEM,
    ChatMessage,
    ChatTemplate,
    Conversation,
    chat_template_for,
    parse_messages,
    render_hf_template,
    render_prompt,
    render_qwen_chatml,
)
from .tokenizer import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    QWEN_PAT_STR,
    QWEN_SPECIAL_TOKENS,
    QwenTiktokenTokenizer,
    SpecialTokens,
    Tokenizer,
    load_tokenizer,
)
from .words import from_word_list, ids_to_word_list, to_word_list

__all__ = [
    "CHATML_TEMPLATE", "DEFAULT_MAX_WINDOW_SIZE", "DEFAULT_SYSTEM", "ENDOFTEXT", "IM_END", "IM_START",
    "QWEN_PAT_STR", "QWEN_SPECIAL_TOKENS",
    "ChatMessage", "ChatTemplate", "Conversation", "HFTokenizer", "HFTokenizerFiles",
    "IncrementalDetokenizer", "QwenTiktokenTokenizer", "SpecialTokens", "Tokenizer",
    "chat_template_for", "complete_prefix_len", "from_word_list", "ids_to_word_list", "load_tokenizer",
    "parse_messages", "render_hf_template", "render_prompt",
    "render_qwen_chatml", "to_word_list", "utf8_incomplete_tail",
]
