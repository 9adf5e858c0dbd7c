"""radixserve: an LLM inference server built around a radix-tree KV prefix cache."""

__version__ = "0.1.0"
__all__ = ["Engine", "__version__"]


def __getattr__(name: str):
    # Lazy: ``import radixserve`` stays cheap and works without torch being imported.
    if name == "Engine":
        from radixserve.engine.offline import Engine

        return Engine
    raise AttributeError(f"module 'radixserve' has no attribute {name!r}")
