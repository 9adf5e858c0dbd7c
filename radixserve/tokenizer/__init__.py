"""Tokenization: the HF tokenizer and chat templates, streaming detokenization, stop strings."""

from radixserve.tokenizer.detokenizer import IncrementalDetokenizer
from radixserve.tokenizer.stop_strings import StopCheck, StopStringMatcher
from radixserve.tokenizer.tokenizer import ChatTemplateError, Tokenizer, load_chat_template

__all__ = [
    "ChatTemplateError",
    "IncrementalDetokenizer",
    "StopCheck",
    "StopStringMatcher",
    "Tokenizer",
    "load_chat_template",
]
