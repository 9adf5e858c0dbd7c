"""Attention backends behind one interface. Concrete GPU backends are imported lazily."""

from radixserve.attention.base import AttentionBackend, ForwardBatch

__all__ = [
    "AUTO_MIXED_DECODE_SPLIT",
    "AUTO_TRITON_DECODE_MAX_BS",
    "AUTO_TRITON_DECODE_MAX_BS_TUNED",
    "BACKENDS",
    "AttentionBackend",
    "ForwardBatch",
    "available_gpu_backend",
    "create_backend",
    "resolve_mixed_decode_split",
    "resolve_triton_decode_max_bs",
]


BACKENDS = ("torch_native", "flashinfer", "triton")


# --triton-decode-max-bs -1: FlashInfer hands decode batches of up to this many sequences to the
# Triton decode kernels where triton is installed. Measured on an H200 (Llama-3.1-8B shapes, 1,024-token
# contexts, one run side by side): batch 1 4.84 vs 5.15 ms/step, batch 32 6.43 vs 6.74, batch 256 17.42
# vs 17.43 (docs/benchmarks.md); the largest CUDA-graph size at or below it is 56.
AUTO_TRITON_DECODE_MAX_BS = 63
# ... and every decode batch where the Triton decode launches are tuned and the shapes are those
# measured (Hopper, 16-bit K/V, head_dim <= 128, grouped query heads:
# ``launch_configs.measured_for_every_decode``). Measured on an H200 (Llama-3.1-8B dummy bf16), each pair in one run, since
# large captured batches read their contexts in chunks from a work list (ninth session,
# docs/benchmarks.md): workload (a) 11,872 -> 11,994, 11,865 -> 12,041 and 11,799 -> 11,935 output tok/s;
# shared-prefix (cache on, whose decode steps run the same cascade either way) 139,190 and 138,268
# (the default twice) against 137,848 total tok/s. A batch-768 step (bench.profile_step, separate
# runs): 30.51 ms on FlashInfer's decode (eighth session), 27.50 on Triton's (ninth).
AUTO_TRITON_DECODE_MAX_BS_TUNED = 1 << 30

# --mixed-decode-split -1: on FlashInfer, a mixed step with this many or more decodes runs them on the
# decode kernels (the shared-prefix cascade where it pays). Measured on an H200 (Llama-3.1-8B dummy,
# one run side by side, commit 1461b47): workload (a) 11,465 -> 11,894 output tok/s; shared-prefix with
# the cache on 105,036 -> 133,175 total tok/s (docs/benchmarks.md, sixth session).
AUTO_MIXED_DECODE_SPLIT = 64


def resolve_triton_decode_max_bs(name: str, triton_decode_max_bs: int, tuned: bool = False) -> int:
    """The small-decode cut-off for backend ``name``: -1 (auto) is, on flashinfer where triton is
    installed, ``AUTO_TRITON_DECODE_MAX_BS_TUNED`` (every decode batch) where ``tuned`` (the shapes
    the flip was measured on: ``launch_configs.measured_for_every_decode``) and
    ``AUTO_TRITON_DECODE_MAX_BS`` elsewhere, else 0 (off); any other value is checked and kept."""
    if triton_decode_max_bs == -1:
        import importlib.util

        if name != "flashinfer" or importlib.util.find_spec("triton") is None:
            return 0
        return AUTO_TRITON_DECODE_MAX_BS_TUNED if tuned else AUTO_TRITON_DECODE_MAX_BS
    if triton_decode_max_bs < 0 or (triton_decode_max_bs and name != "flashinfer"):
        raise ValueError(
            f"--triton-decode-max-bs {triton_decode_max_bs}: a batch size >= 0 (or -1: auto), and only with the"
            f" flashinfer backend (this one: {name})"
        )
    return triton_decode_max_bs


def resolve_mixed_decode_split(name: str, mixed_decode_split: int) -> int:
    """The mixed-step decode split for backend ``name``: -1 (auto) is ``AUTO_MIXED_DECODE_SPLIT`` on
    flashinfer, else 0 (off); any other value is checked and kept."""
    if mixed_decode_split == -1:
        return AUTO_MIXED_DECODE_SPLIT if name == "flashinfer" else 0
    if mixed_decode_split < 0 or (mixed_decode_split and name != "flashinfer"):
        raise ValueError(
            f"--mixed-decode-split {mixed_decode_split}: a count >= 0 (or -1: auto), and only with the flashinfer"
            f" backend (this one: {name})"
        )
    return mixed_decode_split


def create_backend(
    name: str,
    kv_pool,
    num_q_heads: int,
    triton_decode_max_bs: int = 0,
    mixed_decode_split: int = 0,
    ragged_prefill: bool = False,
) -> AttentionBackend:
    """Build the backend called ``name`` over ``kv_pool`` (see ``radixserve.runner.kv_pool``).
    ``triton_decode_max_bs`` > 0 (flashinfer only): decode batches of at most that many sequences
    run the Triton decode kernels instead (see ``small_decode.py``); -1: the measured default.
    ``mixed_decode_split`` > 0 (flashinfer only): a mixed step's leading decodes, when at least that
    many, run on the decode kernels; -1: the measured default; ``ragged_prefill`` (flashinfer only): prefills from an empty
    context attend over the new K/V directly (see ``flashinfer_backend.py``)."""
    if ragged_prefill and name != "flashinfer":
        raise ValueError(f"--ragged-prefill: only with the flashinfer backend (this one: {name})")
    from radixserve.attention.launch_configs import measured_for_every_decode

    triton_decode_max_bs = resolve_triton_decode_max_bs(
        name, triton_decode_max_bs, measured_for_every_decode(kv_pool, num_q_heads)
    )
    mixed_decode_split = resolve_mixed_decode_split(name, mixed_decode_split)
    if name == "torch_native":
        from radixserve.attention.torch_native import TorchNativeBackend

        return TorchNativeBackend(kv_pool)
    if name == "flashinfer":
        from radixserve.attention.flashinfer_backend import FlashInferBackend

        backend = FlashInferBackend(kv_pool, num_q_heads, mixed_decode_split, ragged_prefill)
        if triton_decode_max_bs <= 0:
            return backend
        from radixserve.attention.small_decode import SmallDecodeSplit
        from radixserve.attention.triton_backend import TritonBackend

        return SmallDecodeSplit(backend, TritonBackend(kv_pool, num_q_heads=num_q_heads), triton_decode_max_bs)
    if name == "triton":
        from radixserve.attention.triton_backend import TritonBackend

        return TritonBackend(kv_pool, num_q_heads=num_q_heads)
    raise ValueError(f"unknown attention backend {name!r} (available: {', '.join(BACKENDS)})")


def available_gpu_backend() -> str | None:
    """The best installed GPU backend: flashinfer, else triton, else None."""
    import importlib.util

    for name, module in (("flashinfer", "flashinfer"), ("triton", "triton")):
        if importlib.util.find_spec(module) is not None:
            return name
    return None
