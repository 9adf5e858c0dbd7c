"""Attention backends behind one interface. Concrete GPU backends are imported lazily."""

from radixserve.attention.base import AttentionBackend, ForwardBatch

__all__ = ["BACKENDS", "AttentionBackend", "ForwardBatch", "available_gpu_backend", "create_backend"]


BACKENDS = ("torch_native", "flashinfer", "triton")


def create_backend(name: str, kv_pool, num_q_heads: int) -> AttentionBackend:
    """Build the backend called ``name`` over ``kv_pool`` (see ``radixserve.runner.kv_pool``)."""
    if name == "torch_native":
        from radixserve.attention.torch_native import TorchNativeBackend

        return TorchNativeBackend(kv_pool)
    if name == "flashinfer":
        from radixserve.attention.flashinfer_backend import FlashInferBackend

        return FlashInferBackend(kv_pool, num_q_heads)
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
