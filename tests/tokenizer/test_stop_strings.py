"""Stop strings over streamed deltas: holdback, trimming, earliest match, and a naive reference."""

from __future__ import annotations

import random

import pytest

from radixserve.tokenizer import StopCheck, StopStringMatcher


def test_stop_across_delta_boundaries_is_held_then_trimmed():
    matcher = StopStringMatcher(["</answer>"])
    assert matcher.feed("The answer is 42.</") == StopCheck("The answer is 42.")
    assert matcher.held == "</"
    assert matcher.feed("ans") == StopCheck("")
    assert matcher.feed("wer> and then more") == StopCheck("", "</answer>")
    assert matcher.matched == "</answer>"


def test_held_text_is_released_once_it_cannot_be_a_stop():
    matcher = StopStringMatcher(["</answer>"])
    assert matcher.feed("a </") == StopCheck("a ")
    assert matcher.feed("b> c") == StopCheck("</b> c")
    assert matcher.held == ""


def test_partial_stop_inside_held_text_restarts_at_a_later_prefix():
    matcher = StopStringMatcher(["aab"])
    assert matcher.feed("xa") == StopCheck("x")
    assert matcher.feed("a") == StopCheck("")
    assert matcher.feed("a") == StopCheck("a")  # "aaa": only the last "aa" can still start "aab"
    assert matcher.feed("b!") == StopCheck("", "aab")


def test_no_stop_trim_keeps_the_stop_string():
    matcher = StopStringMatcher(["STOP"], no_stop_trim=True)
    assert matcher.feed("go go ST") == StopCheck("go go ")
    assert matcher.feed("OP after") == StopCheck("STOP", "STOP")


def test_earliest_occurrence_wins_whatever_the_list_order():
    for stops in (["world", "hello"], ["hello", "world"]):
        assert StopStringMatcher(stops).feed("say hello world") == StopCheck("say ", "hello")
        assert StopStringMatcher(stops, no_stop_trim=True).feed("say hello world") == StopCheck("say hello", "hello")


def test_the_stop_that_completes_first_wins():
    # Token-by-token, "bc" completes before "abcd" does, so it must win when both arrive at once too.
    assert StopStringMatcher(["abcd", "bc"]).feed("xabcd") == StopCheck("xa", "bc")
    # Completing together: the longer one (starting earlier) wins, so no part of a stop is emitted.
    assert StopStringMatcher(["bc", "abc"]).feed("xabc") == StopCheck("x", "abc")


def test_stop_at_the_very_start():
    assert StopStringMatcher(["Hello"]).feed("Hello there") == StopCheck("", "Hello")
    matcher = StopStringMatcher(["\n\n"])
    assert matcher.feed("\n") == StopCheck("")
    assert matcher.feed("\nrest") == StopCheck("", "\n\n")


def test_flush_releases_the_holdback_when_generation_ends_otherwise():
    matcher = StopStringMatcher(["<stop>"])
    assert matcher.feed("almost <st") == StopCheck("almost ")
    assert matcher.flush() == "<st"
    assert matcher.flush() == ""


def test_nothing_after_a_match():
    matcher = StopStringMatcher(["x"])
    assert matcher.feed("ax<held") == StopCheck("a", "x")
    assert matcher.feed("more") == StopCheck("", "x")
    assert matcher.flush() == ""


def test_no_stops_passes_text_through():
    matcher = StopStringMatcher([])
    assert matcher.feed("anything") == StopCheck("anything")
    assert matcher.flush() == ""


def test_empty_stop_string_is_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher(["ok", ""])


def _reference(text: str, stops: list[str], no_stop_trim: bool) -> tuple[str, str | None]:
    """Scan the whole text one character at a time: the first stop to complete ends it."""
    for end in range(1, len(text) + 1):
        done = [s for s in stops if text[:end].endswith(s)]
        if done:
            stop = max(done, key=len)
            return text[:end] if no_stop_trim else text[: end - len(stop)], stop
    return text, None


def test_random_streams_match_the_reference():
    rng = random.Random(7)
    for _ in range(2000):
        text = "".join(rng.choice("aab c") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("abc") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        no_stop_trim = rng.random() < 0.5
        matcher = StopStringMatcher(stops, no_stop_trim)
        emitted, matched, start = [], None, 0
        while start < len(text) and matched is None:
            size = rng.randint(1, 5)
            check = matcher.feed(text[start : start + size])
            emitted.append(check.emit)
            matched, start = check.matched, start + size
            assert not any(s in "".join(emitted) for s in stops) or no_stop_trim
        if matched is None:
            emitted.append(matcher.flush())
        assert ("".join(emitted), matched) == _reference(text, stops, no_stop_trim)
