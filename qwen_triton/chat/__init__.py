"""Chat layer for the CPU pre/postprocessing models: tokenizers, chat templates, streaming
detokenization, stop/bad word lists, and function calling (tools.py and the tool_* modules). Plain
Python, no torch (tool_guides imports xgrammar, and with it torch, only when it builds a guide)."""
from .detokenizer import IncrementalDetokenizer, complete_prefix_len, utf8_incomplete_tail
from .hf_tokenizer import HFTokenizer, HFTokenizerFiles
from .messages import ChatMessage, parse_messages
from .template import (
    CHATML_TEMPLATE,
    DEFAULT_MAX_WINDOW_SIZE,
    DEFAULT_SYSTEM,
    ChatTemplate,
    Conversation,
    RenderedPrompt,
    chat_template_for,
    render_hf_template,
    render_prompt,
    render_qwen_chatml,
    render_template_messages,
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
from .tool_guides import Guide, tool_call_guide
from .tool_parse import ParsedReply, StreamDelta, ToolCallDelta, parse_reply
from .tool_render import ToolPrompt, render_chat, tool_format_for
from .tool_stream import ToolCallStream, merge_deltas
from .tools import ToolCall, ToolChoice, ToolFormat, ToolRequest
from .words import from_word_list, ids_to_word_list, to_word_list

__all__ = [
    "CHATML_TEMPLATE", "DEFAULT_MAX_WINDOW_SIZE", "DEFAULT_SYSTEM", "ENDOFTEXT", "IM_END", "IM_START",
    "QWEN_PAT_STR", "QWEN_SPECIAL_TOKENS",
    "ChatMessage", "ChatTemplate", "Conversation", "Guide", "HFTokenizer", "HFTokenizerFiles",
    "IncrementalDetokenizer", "ParsedReply", "QwenTiktokenTokenizer", "RenderedPrompt", "SpecialTokens",
    "StreamDelta", "Tokenizer", "ToolCall", "ToolCallDelta", "ToolCallStream", "ToolChoice", "ToolFormat",
    "ToolPrompt", "ToolRequest",
    "chat_template_for", "complete_prefix_len", "from_word_list", "ids_to_word_list", "load_tokenizer",
    "merge_deltas", "parse_messages", "parse_reply", "render_chat", "render_hf_template", "render_prompt",
    "render_qwen_chatml", "render_template_messages", "to_word_list", "tool_call_guide", "tool_format_for",
    "utf8_incomplete_tail",
]
