"""The engine on CUDA: graphs, backends and the overlapped loop against the plain paths.

A small random Llama (head_dim 128, GQA 4) in bf16, the embedded model's tokenizer (from
``RADIXSERVE_TOKENIZER_PATH`` or the embedded model), real scheduler, cache and sampler. Where two
runs execute the same kernels (graph replay vs eager at the same batch size, overlap on vs off)
greedy output must be token-identical; across attention backends bf16 rounding can flip near-ties
of a random model, so those compare the first step's log-probabilities instead.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import random

import pytest
import torch

from tests.gpu.near_ties import departures

pytestmark = pytest.mark.gpu

SMALL_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}


@pytest.fixture(scope="module")
def tokenizer_path() -> str:
    path = os.environ.get("RADIXSERVE_TOKENIZER_PATH")
    if path:
        return path
    from radixserve.model.default_model import ensure_default_model

    try:
        return str(ensure_default_model())
    except Exception as exc:  # the embedded model's package is not installed here
        pytest.skip(f"no tokenizer: set RADIXSERVE_TOKENIZER_PATH ({exc})")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("small-llama")
    (directory / "config.json").write_text(json.dumps(SMALL_LLAMA))
    return str(directory)


def _engine(model_dir: str, tokenizer_path: str, **kwargs):
    from radixserve import Engine

    defaults = {  # flashinfer alone unless a test asks for the small-decode split (test_small_decode_batches_...)
        "load_format": "dummy",
        "max_total_tokens": 65536,
        "chunked_prefill_size": 512,
        "random_seed": 7,
        "triton_decode_max_bs": 0,
    }
    return Engine(model_path=model_dir, tokenizer_path=tokenizer_path, **{**defaults, **kwargs})


def _prompts(count: int, seed: int = 0, share: bool = True) -> list[list[int]]:
    rng = random.Random(seed)
    shared = [rng.randrange(3, 49000) for _ in range(300)]  # half the prompts share a prefix
    prompts = []
    for i in range(count):
        own = [rng.randrange(3, 49000) for _ in range(rng.randrange(5, 400))]
        prompts.append(shared + own if share and i % 2 else own)
    return prompts


def _greedy(engine, prompts, max_new_tokens=24) -> list[dict]:
    """Greedy outputs with the eight best log-probabilities at each step, for ``departures`` (bf16
    logits of the random model tie three ways and more)."""
    params = {"temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}
    return engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True, top_logprobs_num=8)


# A bf16 logit near 4 moves in steps of 1/64: sums taken in another order (another batch size,
# split count, graph padding, kernel) can flip a choice whose margin is a few such steps.
NEAR_TIE = 0.1


def _assert_same_up_to_near_ties(got: list[dict], expected: list[dict]) -> None:
    """Each output equals the reference's, or first departs at a near-tie of the reference, to its
    runner-up."""
    _, wrong = departures(expected, got, NEAR_TIE)
    assert not wrong, wrong


def _release(engine) -> None:
    engine.shutdown()
    gc.collect()
    torch.cuda.empty_cache()


@pytest.mark.parametrize("backend", ["flashinfer", "triton", "default"])
def test_graph_replay_and_overlap_match_the_plain_eager_loop(backend, model_dir, tokenizer_path):
    """Graphs (padded batches, a fixed KV split; piecewise graphs for the other steps) and the
    overlapped loop (other batch compositions when prompts share prefixes) do not run the eager
    path's exact kernels: the random model's near-ties may flip, nothing else may. "default": the
    shipped configuration (FlashInfer with small decodes on Triton) against plain eager FlashInfer."""
    if backend != "triton":
        pytest.importorskip("flashinfer")
    prompts = _prompts(24)
    plain_backend = "flashinfer" if backend == "default" else backend
    plain = _engine(
        model_dir,
        tokenizer_path,
        attention_backend=plain_backend,
        disable_cuda_graph=True,
        disable_overlap_schedule=True,
    )
    expected = _greedy(plain, prompts)
    plain.core.check_invariants()
    _release(plain)
    chosen = {"attention_backend": "auto", "triton_decode_max_bs": -1} if backend == "default" else {}
    fast = _engine(model_dir, tokenizer_path, **{"attention_backend": backend, **chosen}, cuda_graph_max_bs=32)
    assert fast.core.runner.graph_runner is not None and fast.core.runner.piecewise_runner is not None
    _assert_same_up_to_near_ties(_greedy(fast, prompts), expected)
    fast.core.check_invariants()
    assert fast.core.cache.accounting()["protected"] == 0
    _release(fast)


def _plain_flashinfer_greedy(model_dir: str, tokenizer_path: str, prompts) -> list[dict]:
    """The reference: FlashInfer alone, eager, synchronous."""
    plain = _engine(
        model_dir,
        tokenizer_path,
        attention_backend="flashinfer",
        disable_cuda_graph=True,
        disable_overlap_schedule=True,
    )
    expected = _greedy(plain, prompts)
    _release(plain)
    return expected


def test_small_decode_batches_on_triton_kernels_match_flashinfer_up_to_near_ties(model_dir, tokenizer_path):
    """``--triton-decode-max-bs 16``: while the 24 prompts are admitted chunk by chunk the decode
    batches are small (Triton decode, graphs of 1-16), then 24 (FlashInfer, graph of 24); prefill
    and mixed steps stay on FlashInfer. Against the plain FlashInfer loop only near-ties may flip."""
    pytest.importorskip("flashinfer")
    from radixserve.attention.small_decode import SmallDecodeSplit

    prompts = _prompts(24, seed=5)
    expected = _plain_flashinfer_greedy(model_dir, tokenizer_path, prompts)
    split = _engine(
        model_dir, tokenizer_path, attention_backend="flashinfer", triton_decode_max_bs=16, cuda_graph_max_bs=32
    )
    backend = split.core.runner.backend
    assert isinstance(backend, SmallDecodeSplit)
    graph_sizes = split.core.runner.graph_runner.sizes
    assert {backend.route(_decode_batch(size)) for size in graph_sizes} == {backend.small, backend.large}
    _assert_same_up_to_near_ties(_greedy(split, prompts), expected)
    split.core.check_invariants()
    _release(split)


def test_triton_chunked_decode_graphs_match_flashinfer_up_to_near_ties(model_dir, tokenizer_path):
    """The Triton backend alone with every captured decode step chunked (forced here: chunks of 64
    keys, up to 16 of them; unforced, only batches that fill the card are): contexts of one chunk
    are written by the split kernel, longer ones merged several heads a program, inside CUDA graphs.
    Against the plain FlashInfer loop only near-ties may flip."""
    pytest.importorskip("flashinfer")
    from radixserve.attention import launch_configs

    prompts = _prompts(24, seed=10, share=False)  # 5-400 tokens: one chunk and several
    expected = _plain_flashinfer_greedy(model_dir, tokenizer_path, prompts)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(launch_configs, "graph_splits", lambda *args, **kwargs: 1)
        patch.setattr(launch_configs, "MAX_SPLIT_KEYS", 64)
        patch.setattr(launch_configs, "CHUNKED_GRAPH_SPLITS", 16)
        chunked = _engine(model_dir, tokenizer_path, attention_backend="triton", cuda_graph_max_bs=32)
        layouts = chunked.core.runner.backend._captured.values()
        assert layouts and all(layout == launch_configs.DecodeLayout(16, 64) for layout in layouts)
        got = _greedy(chunked, prompts)
    _assert_same_up_to_near_ties(got, expected)
    chunked.core.check_invariants()
    _release(chunked)


def test_mixed_decode_split_matches_the_plain_loop_up_to_near_ties(model_dir, tokenizer_path):
    """``--mixed-decode-split 1`` under the default small-decode split: the decodes of every mixed
    step (24 prompts admitted chunk by chunk while others decode) run on FlashInfer's decode kernels,
    or on the cascade where half of them share a 300-token prefix (its threshold lowered to nothing
    here: this model's K/V is small), the chunks on its prefill kernel."""
    pytest.importorskip("flashinfer")
    from radixserve.attention import flashinfer_backend, shared_prefix

    prompts = _prompts(24, seed=6)
    expected = _plain_flashinfer_greedy(model_dir, tokenizer_path, prompts)
    heads = []  # the decode head of every split step
    original = flashinfer_backend.FlashInferBackend._prepare_decode_head

    def counted(self, head):
        heads.append(original(self, head))
        return heads[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shared_prefix, "MIN_SAVED_BYTES", 0)
        patch.setattr(flashinfer_backend.FlashInferBackend, "_prepare_decode_head", counted)
        split = _engine(
            model_dir, tokenizer_path, attention_backend="flashinfer", triton_decode_max_bs=-1, mixed_decode_split=1
        )
        got = _greedy(split, prompts)
    assert heads and any(head.cascade is not None for head in heads)
    _assert_same_up_to_near_ties(got, expected)
    split.core.check_invariants()
    _release(split)


def test_ragged_prefill_matches_the_plain_loop_up_to_near_ties(model_dir, tokenizer_path):
    """``--ragged-prefill``: the first chunks of the 24 prompts (nothing cached yet, no decodes in
    the step) attend over the new K/V directly; every later step runs as before."""
    pytest.importorskip("flashinfer")
    prompts = _prompts(24, seed=8, share=False)
    expected = _plain_flashinfer_greedy(model_dir, tokenizer_path, prompts)
    ragged = _engine(model_dir, tokenizer_path, attention_backend="flashinfer", ragged_prefill=True)
    backend = ragged.core.runner.backend
    runs = []  # whether each prepared step ran ragged
    original = backend.prepare

    def counted(batch):
        original(batch)
        runs.append(backend.step_ragged)

    backend.prepare = counted
    _assert_same_up_to_near_ties(_greedy(ragged, prompts), expected)
    assert any(runs) and not all(runs)
    ragged.core.check_invariants()
    _release(ragged)


def _decode_batch(size: int):
    from radixserve.attention.base import ForwardBatch

    empty = torch.empty(0)
    return ForwardBatch(empty, empty, empty, empty, empty, empty, [1] * size, [1] * size, empty)


@pytest.mark.parametrize("backend", ["flashinfer", "triton"])
def test_overlapped_loop_is_token_identical_to_the_synchronous_one_without_shared_prefixes(
    backend, model_dir, tokenizer_path
):
    """Without shared prefixes both loops form the same batches step by step (nothing is deferred
    for an in-flight prefix), so the very same kernels run: any difference is an overlap bug."""
    if backend == "flashinfer":
        pytest.importorskip("flashinfer")
    prompts = _prompts(24, seed=3, share=False)
    synchronous = _engine(model_dir, tokenizer_path, attention_backend=backend, disable_overlap_schedule=True)
    expected = _greedy(synchronous, prompts)
    _release(synchronous)
    overlapped = _engine(model_dir, tokenizer_path, attention_backend=backend)
    identical, wrong = departures(expected, _greedy(overlapped, prompts), near_tie=0.0)
    assert identical == len(prompts), wrong
    _release(overlapped)


@pytest.mark.parametrize("backend", ["flashinfer", "triton"])
def test_overlapped_loop_matches_the_synchronous_one_up_to_near_ties(backend, model_dir, tokenizer_path):
    """With shared prefixes the overlapped loop admits requests in other steps (a prefix still in
    flight is not a hit yet), so batches and float sums differ: near-ties may flip."""
    if backend == "flashinfer":
        pytest.importorskip("flashinfer")
    prompts = _prompts(24, seed=2)
    synchronous = _engine(model_dir, tokenizer_path, attention_backend=backend, disable_overlap_schedule=True)
    expected = _greedy(synchronous, prompts)
    _release(synchronous)
    overlapped = _engine(model_dir, tokenizer_path, attention_backend=backend)
    _assert_same_up_to_near_ties(_greedy(overlapped, prompts), expected)
    overlapped.core.check_invariants()
    _release(overlapped)


@pytest.mark.parametrize("backend", ["flashinfer", "triton"])
def test_first_token_logprobs_agree_with_torch_native(backend, model_dir, tokenizer_path):
    if backend == "flashinfer":
        pytest.importorskip("flashinfer")
    prompts = _prompts(16, seed=1)
    params = {"temperature": 0, "max_new_tokens": 1, "ignore_eos": True}

    def first_tokens(engine):
        outs = engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True, top_logprobs_num=5)
        return [dict(out["meta_info"]["output_top_logprobs"][0]) for out in outs]

    reference = _engine(model_dir, tokenizer_path, attention_backend="torch_native", disable_cuda_graph=True)
    expected = first_tokens(reference)
    _release(reference)
    engine = _engine(model_dir, tokenizer_path, attention_backend=backend)
    got = first_tokens(engine)
    _release(engine)
    for want, have in zip(expected, got):
        shared = set(want) & set(have)
        assert len(shared) >= 4, (want, have)  # the same top-5 but for a near-tie at the edge
        for token in shared:
            assert abs(want[token] - have[token]) < 0.05, (token, want[token], have[token])


def test_default_backend_on_cuda_is_a_gpu_backend(model_dir, tokenizer_path):
    """The defaults: FlashInfer (decode batches on the Triton kernels: every one where its launches
    are tuned for the model's shapes, else the small ones) where installed, else Triton."""
    from radixserve.attention import AUTO_TRITON_DECODE_MAX_BS, AUTO_TRITON_DECODE_MAX_BS_TUNED
    from radixserve.attention.launch_configs import measured_for_every_decode

    engine = _engine(model_dir, tokenizer_path, max_total_tokens=4096, cuda_graph_max_bs=8, triton_decode_max_bs=-1)
    backend = engine.core.runner.backend
    if importlib.util.find_spec("flashinfer") is not None:
        assert type(backend).__name__ == "SmallDecodeSplit"
        assert (type(backend.large).__name__, type(backend.small).__name__) == ("FlashInferBackend", "TritonBackend")
        pool = engine.core.runner.kv_pool
        every = measured_for_every_decode(pool, SMALL_LLAMA["num_attention_heads"])
        assert backend.max_small_bs == (AUTO_TRITON_DECODE_MAX_BS_TUNED if every else AUTO_TRITON_DECODE_MAX_BS)
    else:
        assert type(backend).__name__ == "TritonBackend"
    assert engine.core.runner.device.type == "cuda"
    _release(engine)


@pytest.mark.parametrize("backend", ["flashinfer", "triton"])
def test_shared_prefix_decode_steps_run_the_cascade_and_match_the_plain_decode(backend, model_dir, tokenizer_path):
    """Requests under one radix node decode through the cascade (each shared prefix read once per
    step) with the thresholds lowered to this small model's sizes; against the same engine with the
    cascade unreachable, greedy tokens agree but for bf16 near-ties of the random model."""
    if backend == "flashinfer":
        pytest.importorskip("flashinfer")
    from radixserve.attention import shared_prefix

    rng = random.Random(5)
    system = [rng.randrange(3, 49000) for _ in range(700)]
    prompts = [system + [rng.randrange(3, 49000) for _ in range(rng.randrange(2, 60))] for _ in range(16)]

    def run(min_saved_bytes: int) -> tuple[list, int]:
        runs = []
        original = shared_prefix.SharedPrefixDecode.run

        def counted(self, *args):
            runs.append(1)
            return original(self, *args)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(shared_prefix, "MIN_SAVED_BYTES", min_saved_bytes)
            patch.setattr(shared_prefix.SharedPrefixDecode, "run", counted)
            engine = _engine(model_dir, tokenizer_path, attention_backend=backend, cuda_graph_max_bs=32)
            _greedy(engine, prompts[:1], max_new_tokens=2)  # the system prompt enters the tree
            outputs = _greedy(engine, prompts[1:], max_new_tokens=32)
            engine.core.check_invariants()
            assert engine.core.cache.accounting()["protected"] == 0
            _release(engine)
        return outputs, len(runs)

    cascade, cascade_layers = run(0)
    plain, plain_layers = run(1 << 60)
    assert cascade_layers >= 20 * SMALL_LLAMA["num_hidden_layers"] and plain_layers == 0, (cascade_layers, plain_layers)
    _assert_same_up_to_near_ties(cascade, plain)


@pytest.mark.parametrize("backend", ["flashinfer", "triton"])
def test_decode_graphs_replay_contexts_that_list_the_pool_many_times_over(backend, model_dir, tokenizer_path):
    """Requests sharing a long prefix in a small pool list its slots each: a decode step's contexts
    sum to more slots than the pool holds. Up to ``CONTEXT_SLOTS_PER_POOL_SLOT`` pools the step
    replays its graph; past it the step runs without one. Both match the eager loop (up to near-ties)
    and fail no request (the constrained-pool bench's steps once failed here)."""
    if backend == "flashinfer":
        pytest.importorskip("flashinfer")
    from radixserve.attention import shared_prefix
    from radixserve.runner import cuda_graph

    pool = 2048
    rng = random.Random(11)
    system = [rng.randrange(3, 49000) for _ in range(700)]
    prompts = [system + [rng.randrange(3, 49000) for _ in range(rng.randrange(2, 30))] for _ in range(16)]
    # 8 requests list ~6,000 slots (past the pool, within the capacity), 16 list ~12,000 (past it)
    assert pool < 8 * 760 < cuda_graph.CONTEXT_SLOTS_PER_POOL_SLOT * pool < 16 * 720

    def run(**kwargs) -> tuple[list, list[int], list[int]]:
        replayed, refused = [], []  # slots listed by the decode steps replayed, and by those run without
        original_replay, original_can_run = cuda_graph.DecodeGraphRunner.replay, cuda_graph.DecodeGraphRunner.can_run

        def counted(self, batch):
            replayed.append(sum(batch.seq_lens))
            return original_replay(self, batch)

        def checked(self, batch):
            fits = original_can_run(self, batch)
            if batch.is_decode and not fits:
                refused.append(sum(batch.seq_lens))
            return fits

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(shared_prefix, "MIN_SAVED_BYTES", 1 << 60)  # no cascade: these steps are the graph's
            patch.setattr(cuda_graph.DecodeGraphRunner, "replay", counted)
            patch.setattr(cuda_graph.DecodeGraphRunner, "can_run", checked)
            engine = _engine(model_dir, tokenizer_path, attention_backend=backend, max_total_tokens=pool, **kwargs)
            _greedy(engine, prompts[:1], max_new_tokens=2)  # the system prompt enters the tree
            outputs = _greedy(engine, prompts[1:9], max_new_tokens=24) + _greedy(engine, prompts, max_new_tokens=24)
            engine.core.check_invariants()
            assert engine.core.cache.accounting()["protected"] == 0
            _release(engine)
        for output in outputs:
            assert output["meta_info"]["finish_reason"]["type"] == "length", output["meta_info"]
        return outputs, replayed, refused

    plain, _, _ = run(disable_cuda_graph=True, disable_overlap_schedule=True)
    graphed, replayed, refused = run(cuda_graph_max_bs=32)
    capacity = cuda_graph.CONTEXT_SLOTS_PER_POOL_SLOT * pool
    assert max(replayed) > pool, replayed  # steps listing the pool more than once replayed
    assert refused and min(refused) > capacity, refused  # the 16-request steps ran without the graph
    _assert_same_up_to_near_ties(graphed, plain)


@pytest.mark.parametrize("form", ["mv", "mm_t", "gemv", "few"])
def test_small_batch_decode_with_tuned_projections_matches_f_linear(form, model_dir, tokenizer_path):
    """Every one-row projection (``mv``, ``mm_t``, ``gemv``) or every projection of 2 to 64 rows
    (``few``) in the given form: the startup timing's choice forced, captured in the decode graphs.
    Greedy decoding, one prompt at a time for a one-row form and eleven together for ``few`` (the
    prefill chunks, longer, stay on F.linear), agrees with the engine that runs every projection
    through F.linear (but for near-ties)."""
    pytest.importorskip("flashinfer")
    from radixserve.model import linear_tuning

    prompts = _prompts(3 if form != "few" else 11, seed=4)
    batches = [[prompt] for prompt in prompts] if form != "few" else [prompts]
    plain = _engine(model_dir, tokenizer_path, disable_one_row_tuning=True)
    expected = [out for batch in batches for out in _greedy(plain, batch, max_new_tokens=32)]
    _release(plain)
    with pytest.MonkeyPatch.context() as patch:
        # the first form of that kind (its first launch for the shape); linear where there is none
        patch.setattr(
            linear_tuning,
            "choose",
            lambda times, *_, **__: next((n for n in times if n.split()[0] == form), "linear"),
        )
        tuned = _engine(model_dir, tokenizer_path)
    # every projection's one-row form (mv, mm_t, gemv) or its few-row forms (few) forced, the rest F.linear
    layers = [m for m in tuned.core.runner.model.modules() if getattr(m, "small_rows", ())]
    forced = [(f is not None) == ((most > 1) == (form == "few")) for m in layers for most, f in m.small_rows]
    assert layers and all(forced), "a projection kept F.linear where the form was forced"
    got = [out for batch in batches for out in _greedy(tuned, batch, max_new_tokens=32)]
    _release(tuned)
    _assert_same_up_to_near_ties(got, expected)


@pytest.mark.parametrize("backend", ["triton", "default"])
def test_programmatic_dependent_launch_changes_no_output(backend, model_dir, tokenizer_path):
    """Programmatic dependent launch (on by default on Hopper) launches the same kernels, each
    program of ours waiting in-kernel for the kernel before it: the outputs match those of
    ``--disable-pdl`` (graphs and the overlapped loop on; near-ties only where the overlapped
    loop's batch compositions differ)."""
    from radixserve.kernels import pdl

    if torch.cuda.get_device_capability()[0] != 9 or not pdl.supported():
        pytest.skip("programmatic dependent launch: Hopper only, with a Triton that has gdc_wait")
    if backend != "triton":
        pytest.importorskip("flashinfer")
    prompts = _prompts(16)
    chosen = {"attention_backend": "auto", "triton_decode_max_bs": -1} if backend == "default" else {}
    options = {"attention_backend": backend, **chosen, "cuda_graph_max_bs": 32}
    plain = _engine(model_dir, tokenizer_path, **options, disable_pdl=True)
    assert not pdl.enabled()
    expected = _greedy(plain, prompts)
    _release(plain)
    launched = _engine(model_dir, tokenizer_path, **options)
    try:
        assert pdl.enabled()
        _assert_same_up_to_near_ties(_greedy(launched, prompts), expected)
        launched.core.check_invariants()
    finally:
        _release(launched)  # shutting the engine down turns PDL off again
    assert not pdl.enabled()
