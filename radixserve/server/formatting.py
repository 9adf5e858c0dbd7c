"""Response bodies in OpenAI's shapes: usage, finish reasons, logprobs."""

from __future__ import annotations

from radixserve.server.generation import Choice


def finish_fields(output) -> dict:
    """``finish_reason`` (stop, length, or abort/error for requests that did not complete) and ``matched_stop``."""
    reason = output.finish_reason
    return {"finish_reason": reason.kind, "matched_stop": reason.matched}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def usage_of(prompts: list[tuple[int, list[Choice]]]) -> dict:
    """Usage over prompts, each with its n choices: a prompt counts once, its first choice's cache hit."""
    prompt_tokens = sum(num for num, _ in prompts)
    completion = sum(len(c.token_ids) for _, choices in prompts for c in choices)
    cached = sum(choices[0].last.cached_tokens for _, choices in prompts if choices and choices[0].last)
    return usage(prompt_tokens, completion, cached)


def _token_entry(tokenizer, token_id: int, logprob: float | None) -> dict:
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def without_stop_token(token_ids: list[int], logprobs: list, top_logprobs: list, finish_reason) -> tuple:
    """Drop the stop token that ended generation: its text is not in the content, so neither is its logprob."""
    matched = finish_reason.matched if finish_reason is not None and finish_reason.kind == "stop" else None
    if isinstance(matched, int) and token_ids and token_ids[-1] == matched:
        return token_ids[:-1], logprobs[:-1], top_logprobs[:-1]
    return token_ids, logprobs, top_logprobs


def chat_logprobs(tokenizer, token_ids: list[int], logprobs: list, top_logprobs: list, finish_reason=None) -> dict:
    token_ids, logprobs, top_logprobs = without_stop_token(token_ids, logprobs, top_logprobs, finish_reason)
    content = []
    for token_id, logprob, top in zip(token_ids, logprobs, top_logprobs):
        entry = _token_entry(tokenizer, token_id, logprob)
        entry["top_logprobs"] = [_token_entry(tokenizer, t, lp) for t, lp in (top or [])]
        content.append(entry)
    return {"content": content}


def completion_logprobs(
    tokenizer, token_ids: list[int], logprobs: list, top_logprobs: list, text_offset: int = 0
) -> dict:
    tokens, offsets = [], []
    for token_id in token_ids:
        text = tokenizer.decode([token_id], skip_special_tokens=False)
        offsets.append(text_offset)
        text_offset += len(text)
        tokens.append(text)
    tops = [{tokenizer.decode([t], skip_special_tokens=False): lp for t, lp in (top or [])} for top in top_logprobs]
    return {"tokens": tokens, "token_logprobs": list(logprobs), "top_logprobs": tops, "text_offset": offsets}
