"""What crosses the engine pipe for a request that does not stream: its first output with tokens,
then one finishing output carrying everything since; a streaming request's outputs pass as they are."""

from __future__ import annotations

from radixserve.core.request import FinishReason
from radixserve.engine.output_coalescing import OutputCoalescer
from radixserve.engine.output_processor import RequestOutput


def _output(request_id: str, tokens: list[int], text: str = "", finished: bool = False) -> RequestOutput:
    return RequestOutput(
        request_id,
        tokens,
        text,
        new_logprobs=[-0.5] * len(tokens),
        new_top_logprobs=[None] * len(tokens),
        finish_reason=FinishReason("length") if finished else None,
        prompt_tokens=9,
        cached_tokens=4,
        completion_tokens=0,
    )


def test_a_held_request_sends_its_first_tokens_then_everything_at_the_finish():
    coalescer = OutputCoalescer()
    coalescer.hold("quiet")
    steps = [
        [_output("quiet", []), _output("loud", [1], "a")],  # a prefill chunk: no tokens yet
        [_output("quiet", [10], ""), _output("loud", [2], "b")],
        [_output("quiet", [11]), _output("loud", [3], "c")],
        [_output("quiet", [12])],
        [_output("quiet", [13], "whole text", finished=True)],
    ]
    outputs = [coalescer.filter(step) for step in steps]
    sent = [[(o.request_id, o.new_token_ids, o.text_delta) for o in step] for step in outputs]
    assert sent == [
        [("loud", [1], "a")],
        [("quiet", [10], ""), ("loud", [2], "b")],
        [("loud", [3], "c")],
        [],
        [("quiet", [11, 12, 13], "whole text")],
    ]
    assert outputs[-1][0].new_logprobs == [-0.5] * 3 and outputs[-1][0].finish_reason.kind == "length"
    # the request is forgotten once finished
    again = coalescer.filter([_output("quiet", [14])])
    assert [o.new_token_ids for o in again] == [[14]]


def test_a_held_request_finishing_on_its_first_tokens_sends_one_output():
    coalescer = OutputCoalescer()
    coalescer.hold("one")
    (output,) = coalescer.filter([_output("one", [5], "x", finished=True)])
    assert output.finished and output.new_token_ids == [5] and output.new_logprobs == [-0.5]


def test_a_long_held_request_finishes_with_every_token_in_order():
    coalescer = OutputCoalescer()
    coalescer.hold("long")
    sent = []
    for step in range(2000):
        sent += coalescer.filter([_output("long", [step], str(step % 10), finished=step == 1999)])
    assert [o.new_token_ids for o in sent] == [[0], list(range(1, 2000))]
    assert sent[1].text_delta == "".join(str(step % 10) for step in range(1, 2000))
    assert len(sent[1].new_logprobs) == 1999
