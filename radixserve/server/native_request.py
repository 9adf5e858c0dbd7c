"""SGLang's native ``/generate`` body, parsed and validated up front into one engine job per sample.

The body names its prompt(s) with exactly one of ``text`` (a string or a list of them) or
``input_ids`` (token ids or a list of lists of them). A list means a batch, and the response is a
list. ``sampling_params`` is one dict for every prompt or a list with one dict per prompt, with
SGLang's names (``max_new_tokens``, ``temperature``, ...). With ``n > 1`` each prompt becomes ``n``
samples; samples are numbered prompt-major: prompt 0's samples, then prompt 1's.
"""

from __future__ import annotations

import uuid
from dataclasses import MISSING, dataclass, fields
from typing import Any

from radixserve.core.sampling_params import InvalidParamError, SamplingParams
from radixserve.server.errors import bad_request
from radixserve.server.protocol import MAX_N

GENERATE_FIELDS = frozenset(
    {
        "text",
        "input_ids",
        "sampling_params",
        "rid",
        "stream",
        "return_logprob",
        "top_logprobs_num",
        "logprob_start_len",
        "return_text_in_logprobs",
    }
)
# SamplingParams fields that SGLang takes at the top level of /generate, not in sampling_params.
_TOP_LEVEL_ONLY = frozenset({"return_logprob", "top_logprobs_num"})
# name -> the Python type its value must have (seed, which may be null, is checked by SamplingParams)
SAMPLING_TYPES: dict[str, type] = {
    f.name: type(f.default if f.default is not MISSING else f.default_factory())
    for f in fields(SamplingParams)
    if f.name not in _TOP_LEVEL_ONLY
}
_TYPE_WORDS = {bool: "a boolean", list: "a list"}


@dataclass(frozen=True)
class Sample:
    """One engine request: entry ``index`` of the response."""

    index: int
    request_id: str
    prompt_ids: list[int]
    sampling: dict  # validated SamplingParams dict, n == 1


@dataclass(frozen=True)
class GenerateRequest:
    samples: list[Sample]
    prompt_param: str  # "text" or "input_ids": what errors about the prompt name
    single: bool  # one prompt, n == 1: the response is an object rather than a list
    stream: bool
    return_text_in_logprobs: bool


def parse_generate(body: dict, tokenizer, vocab_size: int, defaults: dict) -> GenerateRequest:
    """Validate a /generate body. Raises APIError (400) naming the offending parameter.

    ``defaults`` (the model's generation_config) fill sampling parameters the request leaves out
    or sets to null, as SGLang does.
    """
    unknown = sorted(set(body) - GENERATE_FIELDS)
    if unknown:
        raise bad_request(f"unsupported parameter(s): {', '.join(unknown)}", unknown[0], "unsupported_parameter")
    prompts, prompt_param, batched = _prompts(body, tokenizer, vocab_size)
    logprobs = _logprob_options(body, len(prompts))
    raw = _sampling_dicts(body.get("sampling_params"), len(prompts))
    samplings = [_sampling(r, defaults, extra, vocab_size) for r, extra in zip(raw, logprobs)]
    rids = _rids(body.get("rid"), len(prompts), batched)
    samples = _expand(prompts, samplings, rids)
    return GenerateRequest(
        samples=samples,
        prompt_param=prompt_param,
        single=not batched and len(samples) == 1,
        stream=_flag(body, "stream"),
        return_text_in_logprobs=_flag(body, "return_text_in_logprobs"),
    )


def _prompts(body: dict, tokenizer, vocab_size: int) -> tuple[list[list[int]], str, bool]:
    """(prompt ids per prompt, the prompt's parameter name, whether the body is a batch)."""
    text, input_ids = body.get("text"), body.get("input_ids")
    if text is not None and input_ids is not None:
        raise bad_request("pass exactly one of text or input_ids, not both", "input_ids")
    if text is None and input_ids is None:
        raise bad_request("one of text or input_ids is required", "text")
    if text is not None:
        if isinstance(text, str):
            prompts, batched = [text], False
        elif isinstance(text, list) and text and all(isinstance(t, str) for t in text):
            prompts, batched = text, True
        else:
            raise bad_request("text must be a string or a non-empty list of strings", "text")
        ids = [tokenizer.encode(t) for t in prompts]
        param = "text"
    else:
        ids, batched = _token_prompts(input_ids, vocab_size)
        param = "input_ids"
    if any(not prompt for prompt in ids):
        raise bad_request("the prompt is empty", param)
    return ids, param, batched


def _token_prompts(input_ids: Any, vocab_size: int) -> tuple[list[list[int]], bool]:
    if isinstance(input_ids, list) and input_ids and all(_is_int(t) for t in input_ids):
        prompts, batched = [input_ids], False
    elif isinstance(input_ids, list) and input_ids and all(_is_token_list(p) for p in input_ids):
        prompts, batched = input_ids, True
    else:
        raise bad_request("input_ids must be a list of token ids or a non-empty list of such lists", "input_ids")
    if any(not 0 <= t < vocab_size for prompt in prompts for t in prompt):
        raise bad_request(f"input_ids must be token ids in [0, {vocab_size})", "input_ids")
    return [list(p) for p in prompts], batched


def _logprob_options(body: dict, count: int) -> list[dict]:
    """Per prompt, the logprob fields SamplingParams carries (SGLang takes them at the top level)."""
    returns = _per_prompt(body, "return_logprob", count, lambda v: isinstance(v, bool), False, "a boolean")
    tops = _per_prompt(body, "top_logprobs_num", count, _is_int, 0, "an integer")
    # The engine computes no prompt logprobs: only -1 (output tokens only, SGLang's default) is valid.
    _per_prompt(body, "logprob_start_len", count, lambda v: _is_int(v) and v == -1, -1, "-1 (output logprobs only)")
    return [{"return_logprob": True, "top_logprobs_num": top} if wanted else {} for wanted, top in zip(returns, tops)]


def _per_prompt(body: dict, name: str, count: int, is_valid, default, kind: str) -> list:
    value = body.get(name)
    if value is None:
        return [default] * count
    values = value if isinstance(value, list) else [value] * count
    if len(values) != count or not all(is_valid(v) for v in values):
        raise bad_request(f"{name} must be {kind}, or a list of one per prompt", name)
    return values


def _sampling_dicts(raw: Any, count: int) -> list[dict]:
    if raw is None:
        return [{}] * count
    if isinstance(raw, dict):
        return [raw] * count
    if isinstance(raw, list) and len(raw) == count and all(isinstance(r, dict) for r in raw):
        return raw
    raise bad_request("sampling_params must be an object, or a list of one object per prompt", "sampling_params")


def _sampling(raw: dict, defaults: dict, extra: dict, vocab_size: int) -> dict:
    """One prompt's validated sampling dict: defaults, then the request's non-null values."""
    unknown = sorted(set(raw) - set(SAMPLING_TYPES) - {"sampling_seed"})
    if unknown:
        where = " (it is a top-level field of /generate)" if unknown[0] in _TOP_LEVEL_ONLY else ""
        message = f"unknown sampling parameter(s): {', '.join(unknown)}{where}"
        raise bad_request(message, unknown[0], "unsupported_parameter")
    given = {k: v for k, v in raw.items() if v is not None}
    if "sampling_seed" in given:  # SGLang's name for the seed
        if "seed" in given:
            raise bad_request("pass one of seed or sampling_seed", "sampling_seed")
        given["seed"] = given.pop("sampling_seed")
    for name, value in given.items():
        _check_type(name, value)
    params = {**defaults, **given, **extra}
    try:
        sampling = SamplingParams.from_dict(params)
        sampling.validate(vocab_size)
    except InvalidParamError as exc:
        raise bad_request(str(exc), exc.param) from exc
    if sampling.n > MAX_N:
        raise bad_request(f"n must be at most {MAX_N}", "n")
    return params


def _check_type(name: str, value: Any) -> None:
    expected = SAMPLING_TYPES[name]
    if name == "stop":
        ok, kind = isinstance(value, (str, list)), "a string or a list of strings"
    elif name == "logit_bias":
        ok = isinstance(value, dict) and all(_is_token_key(k) and _is_number(v) for k, v in value.items())
        kind = "an object mapping token ids to numbers"
    elif expected is float:
        ok, kind = _is_number(value), "a number"
    elif expected is int:
        ok, kind = _is_int(value), "an integer"
    else:  # bool, list; seed (None by default) is checked by SamplingParams
        ok, kind = expected is type(None) or isinstance(value, expected), _TYPE_WORDS.get(expected, "")
    if not ok:
        raise bad_request(f"{name} must be {kind}", name)


def _rids(rid: Any, count: int, batched: bool) -> list[str]:
    if rid is None:
        return [uuid.uuid4().hex for _ in range(count)]
    if not batched and isinstance(rid, str) and rid:
        return [rid]
    distinct = isinstance(rid, list) and len(rid) == count and len(set(map(str, rid))) == count
    if batched and distinct and all(isinstance(r, str) and r for r in rid):
        return rid
    raise bad_request("rid must be a string for one prompt, or a list of distinct strings, one per prompt", "rid")


def _expand(prompts: list[list[int]], samplings: list[dict], rids: list[str]) -> list[Sample]:
    """n samples per prompt, prompt-major. Sample j of a seeded prompt gets seed + j, so the n differ."""
    samples: list[Sample] = []
    for prompt_ids, sampling, rid in zip(prompts, samplings, rids):
        n = sampling.get("n", 1)
        for j in range(n):
            child = {**sampling, "n": 1}
            if child.get("seed") is not None:
                child["seed"] += j
            request_id = rid if n == 1 else f"{rid}-{j}"
            samples.append(Sample(len(samples), request_id, prompt_ids, child))
    return samples


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"{name} must be a boolean", name)
    return bool(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(t) for t in value)


def _is_token_key(key: Any) -> bool:
    return _is_int(key) or (isinstance(key, str) and key.lstrip("-").isdigit())
