"""Grammar compilation for one tokenizer and model vocabulary: off-thread, cached, shared.

The engine loop calls ``submit`` when a constrained request arrives and polls the future while the
request waits; compilation runs in a thread pool (xgrammar releases the GIL while compiling), so the
loop keeps stepping other requests. One ``CompiledGrammar`` serves any number of ``RequestGrammar``s.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import xgrammar as xgr

from radixserve.constrained.grammar_spec import GrammarError, GrammarSpec
from radixserve.constrained.request_grammar import RequestGrammar

_ANY_OBJECT_SCHEMA = '{"type": "object"}'
# "[15:22:11] /project/cpp/regex_converter.cc:94: " and "Check failed: (error.empty()) is false: "
_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: |Check failed: \(.*?\) is false: ")


class GrammarBackend:
    """Compiles ``GrammarSpec``s against one tokenizer and hands out per-request matchers.

    ``vocab_size`` is the model's (the lm_head width). Ids at or past the tokenizer's size, and the
    tokenizer's special tokens other than stop tokens, are never allowed by any grammar.
    ``stop_token_ids`` are the default tokens that end a grammar (default: the tokenizer's eos).
    ``cache_size`` bounds the number of cached compilations (least recently submitted go first).
    """

    def __init__(
        self,
        hf_tokenizer,
        vocab_size: int,
        max_workers: int = 2,
        *,
        stop_token_ids: Iterable[int] | None = None,
        any_whitespace: bool = True,
        cache_size: int = 256,
    ):
        self.vocab_size = vocab_size
        self.tokenizer_info = build_tokenizer_info(hf_tokenizer, vocab_size, stop_token_ids)
        self._init_compiler(max_workers, any_whitespace)
        self._init_cache(cache_size)

    def _init_compiler(self, max_workers: int, any_whitespace: bool) -> None:
        # xgrammar's own cache is off: ours below is the one place compiled grammars live.
        self._compiler = xgr.GrammarCompiler(self.tokenizer_info, max_threads=max_workers, cache_enabled=False)
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grammar-compile")
        self._compile_fns: dict[str, Callable[[str], xgr.CompiledGrammar]] = {
            "json_schema": lambda text: self._compiler.compile_json_schema(text, any_whitespace=any_whitespace),
            "json_object": lambda _: self._compiler.compile_json_schema(
                _ANY_OBJECT_SCHEMA, any_whitespace=any_whitespace, strict_mode=False
            ),
            "regex": self._compiler.compile_regex,
            "ebnf": self._compiler.compile_grammar,
            "structural_tag": self._compiler.compile_structural_tag,
        }

    def _init_cache(self, cache_size: int) -> None:
        self._cache: OrderedDict[GrammarSpec, Future] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._num_compiles = 0

    @property
    def num_compiles(self) -> int:
        """Compilations started so far (cache misses)."""
        return self._num_compiles

    def submit(self, spec: GrammarSpec) -> Future:
        """A future of the ``xgr.CompiledGrammar`` for ``spec``; never blocks on compilation.

        Equal specs share one future (and one compilation), even while it is still running. The
        future raises ``GrammarError`` with the compiler's message for an invalid grammar.
        """
        with self._lock:
            future = self._cache.get(spec)
            if future is not None:
                self._cache.move_to_end(spec)
                return future
            self._num_compiles += 1
            future = self._executor.submit(self._compile, spec)
            self._cache[spec] = future
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return future

    def compile(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        """Blocking ``submit(spec).result()``, for tests and offline use."""
        return self.submit(spec).result()

    def new_matcher(self, compiled: xgr.CompiledGrammar, stop_token_ids: Iterable[int] | None = None) -> RequestGrammar:
        """A fresh ``RequestGrammar`` at the start of ``compiled``.

        ``stop_token_ids`` replace the backend's defaults (None or empty keeps them). xgrammar never
        uses a stop token as text, so pass only ids that cannot be text (eos, special tokens): an
        ordinary token here (a user's ``stop_token_ids``) can leave a state with nothing allowed.
        Leave user stop ids to the scheduler, which ends the request when one is sampled.
        """
        override = list(stop_token_ids or ()) or None
        return RequestGrammar(xgr.GrammarMatcher(compiled, override_stop_tokens=override))

    def shutdown(self) -> None:
        """Stop the compile threads; pending compilations are cancelled."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _compile(self, spec: GrammarSpec) -> xgr.CompiledGrammar:
        try:
            return self._compile_fns[spec.kind](spec.text)
        except (RuntimeError, ValueError, TypeError) as error:
            raise GrammarError(f"invalid {spec.kind}: {_clean_message(error)}") from error


def build_tokenizer_info(hf_tokenizer, vocab_size: int, stop_token_ids: Iterable[int] | None) -> xgr.TokenizerInfo:
    """xgrammar's view of ``hf_tokenizer`` padded to the model's ``vocab_size``.

    xgrammar takes a special token's text (``<|im_start|>``) for ordinary text, so a grammar that
    allows ``<`` would let the model emit control tokens. Blanking their text makes xgrammar class
    them as special: never allowed, except as a stop token.
    """
    stop_ids = list(stop_token_ids) if stop_token_ids else None
    detected = xgr.TokenizerInfo.from_huggingface(hf_tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
    special_ids = _special_token_ids(hf_tokenizer)
    if not special_ids:
        return detected
    encoded_vocab = [""] * vocab_size
    for token, token_id in hf_tokenizer.get_vocab().items():
        if token_id < vocab_size and token_id not in special_ids:
            encoded_vocab[token_id] = token
    return xgr.TokenizerInfo.from_vocab_and_metadata(encoded_vocab, detected.dump_metadata())


def _special_token_ids(hf_tokenizer) -> set[int]:
    added = getattr(hf_tokenizer, "added_tokens_decoder", {}) or {}
    special_ids = {token_id for token_id, token in added.items() if getattr(token, "special", False)}
    return special_ids | set(getattr(hf_tokenizer, "all_special_ids", ()) or ())


def _clean_message(error: BaseException) -> str:
    lines = [_LOG_PREFIX.sub("", line).strip() for line in str(error).strip().splitlines()]
    return " ".join(line for line in lines if line) or type(error).__name__
