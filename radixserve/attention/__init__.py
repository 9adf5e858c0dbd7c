"""Attention backends behind one interface. Concrete GPU backends are imported lazily."""

from radixserve.attention.base import AttentionBackend, ForwardBatch

__all__ = ["BACKENDS", "AttentionBackend", "ForwardBatch", "available_gpu_backend", "create_backend"]


BACKENDS = ("torch_native", "flashinfer", "triton")


def create_backend(name: str, kv_pool, num_q_heads: int, triton_decode_max_bs: int = 0) -> AttentionBackend:
    """Build the backend called ``name`` over ``kv_pool`` (see ``radixserve.runner.kv_pool``).
    ``triton_decode_max_bs`` > 0 (flashinfer only): decode batches of at most that many sequences
    run the Triton decode kernels instead (see ``small_decode.py``)."""
    if triton_decode_max_bs < 0 or (triton_decode_max_bs and name != "flashinfer"):
        raise ValueError(
            f"--triton-decode-max-bs {triton_decode_max_bs}: a batch size >= 0, and only with the flashinfer backend"
            f" (this one: {name})"
        )
    if name == "torch_native":
        from radixserve.attention.torch_native import TorchNativeBackend

        return TorchNativeBackend(kv_pool)
    if name == "flashinfer":
        from radixserve.attention.flashinfer_backend import FlashInferBackend

        backend = FlashInferBackend(kv_pool, num_q_heads)
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
