"""Attention backends behind one interface. Concrete GPU backends are imported lazily."""

from radixserve.attention.base import AttentionBackend, ForwardBatch

__all__ = ["AttentionBackend", "ForwardBatch", "create_backend"]


def create_backend(name: str, kv_pool, **kwargs) -> AttentionBackend:
    """Build the backend called ``name`` over ``kv_pool`` (see ``radixserve.runner.kv_pool``)."""
    if name == "torch_native":
        from radixserve.attention.torch_native import TorchNativeBackend

        return TorchNativeBackend(kv_pool, **kwargs)
    raise ValueError(f"unknown attention backend {name!r} (available: torch_native)")
