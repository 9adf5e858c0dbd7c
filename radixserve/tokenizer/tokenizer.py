"""The HF fast tokenizer behind one small interface: ids, special tokens, and sandboxed chat templates.

Encoding and decoding go straight to the ``tokenizers`` backend, the same code Hugging Face runs,
without the Python wrapper's per-call overhead. Chat templates render in a Jinja2
``ImmutableSandboxedEnvironment`` configured like transformers' (``trim_blocks``, ``lstrip_blocks``,
``raise_exception``, ``strftime_now``, a non-ASCII-escaping ``tojson``, ``{% generation %}``), so a
model's template renders here exactly as it does in ``tokenizer.apply_chat_template``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer

_CONFIG_FILES = ("generation_config.json", "config.json")


class ChatTemplateError(ValueError):
    """A chat template is missing, malformed, unsafe, or refused the messages (a client error when per-request)."""


class Tokenizer:
    """A Hugging Face fast tokenizer plus the model's end-of-sequence ids and chat template.

    ``path`` is a tokenizer or model directory (or a ``.gguf`` file). ``model_path`` is where
    ``generation_config.json`` / ``config.json`` live, when the tokenizer comes from elsewhere
    (``--tokenizer-path``); it defaults to ``path``. ``chat_template`` (a template file or the
    template text) overrides the tokenizer's own template.
    """

    def __init__(self, path: str | Path, chat_template: str | None = None, model_path: str | Path | None = None):
        self.path = Path(path)
        self.hf = _load_hf_tokenizer(self.path)
        self._backend = self.hf.backend_tokenizer
        self._init_special_tokens()
        self.eos_token_ids: tuple[int, ...] = _eos_token_ids(self.hf, Path(model_path or path))
        self.chat_template: str | None = (
            load_chat_template(chat_template) if chat_template else _model_template(self.hf)
        )
        self._special_prefix = self._find_special_prefix()

    @classmethod
    def from_path(
        cls, path: str | Path, chat_template: str | None = None, model_path: str | Path | None = None
    ) -> Tokenizer:
        """Same as the constructor."""
        return cls(path, chat_template=chat_template, model_path=model_path)

    def _init_special_tokens(self) -> None:
        added = self._backend.get_added_tokens_decoder()
        # Exactly the ids that the backend drops on decode(skip_special_tokens=True).
        self.special_ids: frozenset[int] = frozenset(i for i, token in added.items() if token.special)
        self.bos_token: str | None = self.hf.bos_token
        self.bos_token_id: int | None = self.hf.bos_token_id
        self.eos_token: str | None = self.hf.eos_token
        self.vocab_size: int = self._backend.get_vocab_size(with_added_tokens=True)

    def _find_special_prefix(self) -> list[int]:
        """The ids that ``encode(text, add_special_tokens=True)`` puts before the text (a BOS, or nothing)."""
        plain = self.encode("a", add_special_tokens=False)
        full = self.encode("a", add_special_tokens=True)
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start]
        return []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; special-token strings inside it (``<|im_end|>``) become their ids."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(
        self, token_ids: Iterable[int], skip_special_tokens: bool = False, spaces_between_special_tokens: bool = False
    ) -> str:
        """Text of ``token_ids``. Invalid UTF-8 (a token sequence ending inside a character) shows as U+FFFD.

        ``spaces_between_special_tokens`` only matters when special tokens are kept: the text runs
        between special tokens are decoded separately and every piece is joined with one space, the
        way Hugging Face's slow tokenizers do. Fast tokenizers (and so the default here) join with
        nothing. Tokenization-space clean-up is never applied: it corrupts byte-level BPE output.
        """
        ids = list(token_ids)
        if skip_special_tokens or not spaces_between_special_tokens:
            return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)
        return " ".join(self._decode_pieces(ids))

    def _decode_pieces(self, ids: list[int]) -> list[str]:
        pieces, run = [], []
        for token_id in ids:
            if token_id in self.special_ids:
                if run:
                    pieces.append(self._backend.decode(run))
                    run = []
                pieces.append(self.special_token_text(token_id))
            else:
                run.append(token_id)
        if run:
            pieces.append(self._backend.decode(run))
        return pieces

    def special_token_text(self, token_id: int) -> str:
        """The literal text of a special token, e.g. ``<|im_end|>``."""
        return self._backend.id_to_token(token_id)

    def apply_chat_template(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        tools: list[dict] | None = None,
        **template_kwargs,
    ) -> str:
        """Render ``messages`` (OpenAI-style ``role``/``content`` dicts) into the prompt text.

        ``content`` is a string, None (treated as empty), or a list of ``{"type": "text", "text": ...}``
        parts, which are concatenated. ``chat_template`` (template text) overrides the configured
        one. Raises ``ChatTemplateError`` (a ``ValueError``) for bad messages or a failing template.
        """
        source = chat_template or self.chat_template
        if not source:
            raise ChatTemplateError(
                f"the tokenizer at {self.path} has no chat template; pass one with --chat-template (file or text)"
            )
        context = {k: v for k, v in self._special_token_strings().items() if v is not None}
        context.update(template_kwargs, messages=[_normalize_message(m) for m in messages])
        context.update(add_generation_prompt=add_generation_prompt, tools=tools)
        return render_chat_template(source, context)

    def encode_chat(
        self, messages: Sequence[dict], add_generation_prompt: bool = True, chat_template: str | None = None, **kwargs
    ) -> list[int]:
        """Prompt ids of a conversation: the rendered template plus the tokenizer's BOS only if the template lacks it."""
        text = self.apply_chat_template(messages, add_generation_prompt, chat_template, **kwargs)
        ids = self.encode(text, add_special_tokens=False)
        prefix = self._special_prefix
        if prefix and ids[: len(prefix)] != prefix:
            ids = prefix + ids
        return ids

    def _special_token_strings(self) -> dict[str, str | None]:
        hf = self.hf
        return {
            "bos_token": hf.bos_token,
            "eos_token": hf.eos_token,
            "unk_token": hf.unk_token,
            "pad_token": hf.pad_token,
        }


def load_chat_template(path_or_text: str) -> str:
    """Template text from a file (``.jinja``, or a ``.json`` holding ``{"chat_template": ...}``) or the text itself."""
    path = Path(path_or_text)
    is_template_text = "{{" in path_or_text or "{%" in path_or_text
    if not is_template_text and path.is_file():
        text = path.read_text()
        if path.suffix == ".json":
            text = json.loads(text)["chat_template"]
        return text
    if is_template_text:
        return path_or_text
    raise ChatTemplateError(f"chat template {path_or_text!r} is neither an existing file nor Jinja template text")


def render_chat_template(source: str, context: dict) -> str:
    """Render template text in the sandbox; every failure becomes a ``ChatTemplateError`` saying why."""
    try:
        return _compile_template(source).render(**context)
    except jinja2.exceptions.SecurityError as exc:
        raise ChatTemplateError(f"chat template refused by the sandbox: {exc}") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"chat template is not valid Jinja (line {exc.lineno}): {exc.message}") from exc
    except (jinja2.TemplateError, TypeError) as exc:
        raise ChatTemplateError(f"chat template failed: {exc}") from exc


def _normalize_message(message: dict) -> dict:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ChatTemplateError(f"each message must be an object with a string 'role', got {message!r}")
    content = message.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        content = "".join(_text_of_part(part) for part in content)
    elif not isinstance(content, str):
        raise ChatTemplateError(f"message content must be a string or a list of parts, got {type(content).__name__}")
    return {**message, "content": content}


def _text_of_part(part) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind != "text" or not isinstance(part.get("text"), str):
        raise ChatTemplateError(
            f"unsupported content part {kind!r}: this server handles text only "
            '(parts must be {"type": "text", "text": "..."})'
        )
    return part["text"]


class _GenerationTag(Extension):
    """``{% generation %}...{% endgeneration %}`` (marks assistant text for training masks): render the body."""

    tags = {"generation"}

    def parse(self, parser):
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols], keep_trailing_newline=False
    )
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return env


@functools.lru_cache(maxsize=32)
def _compile_template(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def _load_hf_tokenizer(path: Path):
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(str(path))


def _model_template(hf) -> str | None:
    template = hf.chat_template
    if isinstance(template, dict):  # named templates (e.g. "default", "tool_use")
        template = template.get("default")
    return template or None


def _eos_token_ids(hf, model_path: Path) -> tuple[int, ...]:
    """The tokenizer's EOS, then generation_config.json's, then config.json's (each int or list), deduplicated."""
    found = [hf.eos_token_id]
    model_dir = model_path.parent if model_path.suffix == ".gguf" else model_path
    for name in _CONFIG_FILES:
        config_path = model_dir / name
        if config_path.is_file():
            value = json.loads(config_path.read_text()).get("eos_token_id")
            found.extend(value if isinstance(value, list) else [value])
    return tuple(dict.fromkeys(i for i in found if isinstance(i, int)))
