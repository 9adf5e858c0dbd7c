"""Structured output: grammar specs, off-thread compilation, per-request matchers, vocab bitmasks.

The only package that imports xgrammar. The engine builds one ``GrammarBackend`` per model,
``submit``s a ``GrammarSpec`` per constrained request, wraps the compiled grammar in a
``RequestGrammar``, and each step fills that request's row of a bitmask before sampling.
"""

from radixserve.constrained.bitmask import allocate_bitmask, apply_bitmask_, bitmask_to_bool, bitmask_width
from radixserve.constrained.grammar_backend import GrammarBackend, build_tokenizer_info
from radixserve.constrained.grammar_spec import GRAMMAR_KINDS, GrammarError, GrammarSpec
from radixserve.constrained.request_grammar import RequestGrammar

__all__ = [
    "GRAMMAR_KINDS",
    "GrammarBackend",
    "GrammarError",
    "GrammarSpec",
    "RequestGrammar",
    "allocate_bitmask",
    "apply_bitmask_",
    "bitmask_to_bool",
    "bitmask_width",
    "build_tokenizer_info",
]
