"""Per-request sampling parameters (SGLang names), validated once at admission."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

_GREEDY_EPS = 1e-6


class InvalidParamError(ValueError):
    """A request parameter is out of range. ``param`` names it for an OpenAI-style error."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    no_stop_trim: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    n: int = 1
    return_logprob: bool = False
    top_logprobs_num: int = 0
    logit_bias: dict[int, float] = field(default_factory=dict)
    # Constrained decoding (at most one): a JSON schema (string), a regex, an EBNF grammar, or
    # json_object=True for any JSON object.
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    json_object: bool = False

    @classmethod
    def from_dict(cls, data: dict | None) -> SamplingParams:
        """Build from a user dict; unknown keys are an error, never silently dropped."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidParamError(f"unknown sampling parameter(s): {', '.join(unknown)}", unknown[0])
        if isinstance(data.get("stop"), str):
            data["stop"] = [data["stop"]]
        if data.get("stop") is None:
            data.pop("stop", None)
        if data.get("stop_token_ids") is None:
            data.pop("stop_token_ids", None)
        if data.get("logit_bias") is not None:
            data["logit_bias"] = _logit_bias(data["logit_bias"])
        params = cls(**{k: v for k, v in data.items() if v is not None or k == "seed"})
        params.validate()
        return params

    @property
    def grammar(self) -> tuple[str, str] | None:
        """``(kind, text)`` of the output constraint, or None."""
        for kind in ("json_schema", "regex", "ebnf"):
            text = getattr(self, kind)
            if text is not None:
                return kind, text
        return ("json_object", "") if self.json_object else None

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS or self.top_k == 1

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise ``InvalidParamError`` naming the first bad parameter (wrong types included)."""
        for param, check, message in self._checks():
            try:
                ok = check()
            except TypeError:
                ok = False
            if not ok:
                raise InvalidParamError(f"{param} {message}", param)
        self._validate_constraint()
        if vocab_size is not None:
            self._validate_token_ids(vocab_size)

    def _checks(self) -> list:
        """(param, lazy check, message): lazy, so a wrong type fails its own check and not a later one."""
        return [
            (
                "max_new_tokens",
                lambda: _is_int(self.max_new_tokens) and self.max_new_tokens >= 0,
                "must be an integer >= 0",
            ),
            (
                "min_new_tokens",
                lambda: _is_int(self.min_new_tokens) and self.min_new_tokens >= 0,
                "must be an integer >= 0",
            ),
            ("min_new_tokens", lambda: self.min_new_tokens <= self.max_new_tokens, "must be <= max_new_tokens"),
            ("temperature", lambda: _is_num(self.temperature) and self.temperature >= 0, "must be >= 0"),
            ("top_p", lambda: _is_num(self.top_p) and 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", lambda: _is_int(self.top_k) and (self.top_k == -1 or self.top_k >= 1), "must be -1 or >= 1"),
            ("min_p", lambda: _is_num(self.min_p) and 0 <= self.min_p <= 1, "must be in [0, 1]"),
            (
                "frequency_penalty",
                lambda: _is_num(self.frequency_penalty) and -2 <= self.frequency_penalty <= 2,
                "must be in [-2, 2]",
            ),
            (
                "presence_penalty",
                lambda: _is_num(self.presence_penalty) and -2 <= self.presence_penalty <= 2,
                "must be in [-2, 2]",
            ),
            (
                "repetition_penalty",
                lambda: _is_num(self.repetition_penalty) and 0 < self.repetition_penalty <= 2,
                "must be in (0, 2]",
            ),
            ("seed", lambda: self.seed is None or _is_int(self.seed), "must be an integer"),
            ("n", lambda: _is_int(self.n) and self.n >= 1, "must be an integer >= 1"),
            (
                "top_logprobs_num",
                lambda: _is_int(self.top_logprobs_num) and 0 <= self.top_logprobs_num <= 20,
                "must be in [0, 20]",
            ),
            (
                "stop",
                lambda: isinstance(self.stop, list) and all(isinstance(s, str) and s for s in self.stop),
                "must be a non-empty string or a list of them",
            ),
            ("stop", lambda: len(self.stop) <= 16, "at most 16 stop strings"),
            (
                "stop_token_ids",
                lambda: isinstance(self.stop_token_ids, list) and all(_is_int(t) for t in self.stop_token_ids),
                "must be a list of integers",
            ),
        ]

    def _validate_constraint(self) -> None:
        given = [k for k in ("json_schema", "regex", "ebnf") if getattr(self, k) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) > 1:
            raise InvalidParamError(f"only one output constraint per request, got {' and '.join(given)}", given[1])
        for kind in given[:1]:
            text = getattr(self, kind)
            if kind != "json_object" and (not isinstance(text, str) or not text.strip()):
                raise InvalidParamError(f"{kind} must be a non-empty string", kind)

    def _validate_token_ids(self, vocab_size: int) -> None:
        for token_id in self.stop_token_ids:
            if not 0 <= token_id < vocab_size:
                raise InvalidParamError(f"stop_token_ids: {token_id} is outside the vocabulary", "stop_token_ids")
        for token_id, bias in self.logit_bias.items():
            if not 0 <= token_id < vocab_size:
                raise InvalidParamError(f"logit_bias: token {token_id} is outside the vocabulary", "logit_bias")
            if not -100 <= bias <= 100:
                raise InvalidParamError("logit_bias values must be in [-100, 100]", "logit_bias")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def child_seed(seed: int | None, index: int) -> int | None:
    """The seed of the ``index``-th of n samples: the request's own for the first, a hashed mix for the
    rest, so ``seed=s, n=2`` never replays the stream of ``seed=s + 1``."""
    if seed is None or index == 0:
        return seed
    return (seed ^ (index * 0x9E3779B97F4A7C15)) & 0x7FFFFFFFFFFFFFFF


def _logit_bias(raw) -> dict[int, float]:
    if not isinstance(raw, dict):
        raise InvalidParamError("logit_bias must map token ids to numbers", "logit_bias")
    try:
        return {int(k): float(v) for k, v in raw.items()}
    except (TypeError, ValueError) as exc:
        raise InvalidParamError("logit_bias must map token ids to numbers", "logit_bias") from exc
