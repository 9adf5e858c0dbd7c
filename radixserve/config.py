"""Frozen configuration dataclasses. CLI flags are generated from ``ServerArgs`` (see cli.py).

Every field's ``metadata["help"]`` is its ``--help`` text; flag names follow SGLang's where the
meaning is the same (``model_path`` → ``--model-path``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


def _opt(default, help_text: str, **extra):
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass(frozen=True)
class SchedulerConfig:
    max_running_requests: int = 256
    chunked_prefill_size: int = 2048
    schedule_policy: str = "lpm"
    # A request waiting this many steps goes first, whatever its cache hit.
    aging_steps: int = 256
    # Fraction of each running request's remaining max_new_tokens kept free at admission.
    new_token_ratio: float = 0.3
    # Defer a new request whose uncached prefix is being computed by another this many tokens deep.
    in_batch_prefix_threshold: int = 32
    context_length: int = 2048
    # Decodes ride along with prefill chunks in one step (False: prefill work gets steps of its own,
    # alternating with decode steps while both have work).
    mixed_chunk: bool = True


@dataclass(frozen=True)
class ServerArgs:
    model_path: str | None = _opt(
        None, "HF model dir, .gguf file, or config dir for --load-format dummy; default: embedded SmolLM2-135M-Instruct"
    )
    tokenizer_path: str | None = _opt(None, "tokenizer dir (default: the model dir)")
    load_format: str = _opt("auto", "weights format", choices=("auto", "safetensors", "gguf", "dummy"))
    dtype: str = _opt("auto", "float32 | bfloat16 | float16 | auto (float32 on CPU, bfloat16 on CUDA)")
    device: str = _opt("auto", "cpu | cuda | auto")
    context_length: int | None = _opt(None, "max prompt + output tokens (default: the model's)")
    served_model_name: str | None = _opt(None, "model id reported by the API (default: the model path's name)")
    chat_template: str | None = _opt(None, "Jinja chat template file or string overriding the model's")
    mem_fraction_static: float = _opt(0.85, "fraction of device memory for weights + KV pool (CUDA)")
    max_total_tokens: int | None = _opt(None, "KV pool size in tokens (overrides --mem-fraction-static)")
    max_running_requests: int = _opt(256, "max concurrently running requests")
    chunked_prefill_size: int = _opt(2048, "max tokens computed per step (prefill chunk budget)")
    schedule_policy: str = _opt("lpm", "waiting-queue order", choices=("lpm", "fcfs", "dfs-weight"))
    schedule_conservativeness: float = _opt(
        1.0,
        "scales the KV kept free for running requests' future tokens at admission (0: admit greedily, retract later)",
    )
    disable_radix_cache: bool = _opt(False, "turn prefix reuse off (for comparisons)")
    disable_mixed_chunk: bool = _opt(
        False,
        "prefill chunks run in steps of their own, alternating with decode steps, instead of with the decodes;"
        " pure decode steps can then use CUDA graphs and the shared-prefix cascade",
    )
    attention_backend: str = _opt(
        "auto",
        "torch_native | flashinfer | triton | auto (CUDA: flashinfer if installed, else triton; CPU: torch_native)",
    )
    triton_decode_max_bs: int = _opt(
        -1,
        "flashinfer backend: decode batches of at most this many sequences run the Triton decode kernels"
        " (0: none; -1: auto where triton is installed: every decode batch on Hopper with a 16-bit KV cache,"
        " measured faster on workload (a), else 63, measured faster at batch 1 and 32)",
    )
    mixed_decode_split: int = _opt(
        -1,
        "flashinfer backend: a mixed step whose first N+ sequences decode runs them on the decode kernels (the"
        " shared-prefix cascade where it pays) and only its prefill chunks on the prefill kernel (0: off; -1:"
        " auto, 64 on flashinfer, measured faster on workload (a) and shared-prefix)",
    )
    ragged_prefill: bool = _opt(
        False,
        "flashinfer backend: steps that prefill from an empty context attend over the new K/V directly"
        " (ragged) instead of through the pool's pages",
    )
    cuda_graph_max_bs: int = _opt(256, "largest decode batch replayed from a captured CUDA graph")
    piecewise_cuda_graph_max_tokens: int = _opt(
        1024,
        "steps no decode graph replays (prefill, mixed, shared-prefix cascade) of at most this many tokens"
        " replay the model from CUDA graphs in pieces, attention eager between them (0: eager)",
    )
    disable_cuda_graph: bool = _opt(False, "run every step eagerly on CUDA (no decode or piecewise graphs)")
    disable_one_row_tuning: bool = _opt(
        False,
        "CUDA: projections of 1 to 64 rows (small decode batches) through F.linear, instead of the form"
        " (F.linear, torch.mv, a swapped GEMM, the Triton GEMV or few-row kernel) that timed fastest for each"
        " weight shape and row count at startup",
    )
    enable_pdl: bool = _opt(
        False,
        "require programmatic dependent launch of radixserve's Triton kernels (each waits in-kernel for the kernel"
        " before it, shortening the gaps between kernels): an error where it cannot run. It is on by default on"
        " Hopper GPUs (compute capability 9.x) with a Triton that has it",
    )
    disable_pdl: bool = _opt(False, "launch every kernel plainly, also on Hopper (no programmatic dependent launch)")
    disable_overlap_schedule: bool = _opt(
        False, "detokenize a step's output before launching the next one instead of while the device runs"
    )
    grammar_backend: str = _opt("xgrammar", "constrained decoding backend", choices=("xgrammar", "none"))
    random_seed: int = _opt(0, "seed for unseeded sampling and dummy weights")
    host: str = _opt("127.0.0.1", "HTTP host")
    port: int = _opt(30000, "HTTP port")
    api_key: str | None = _opt(None, "require this bearer key on every endpoint but /health")
    log_level: str = _opt("info", "logging level")

    def scheduler_config(self, context_length: int) -> SchedulerConfig:
        return SchedulerConfig(
            max_running_requests=self.max_running_requests,
            chunked_prefill_size=self.chunked_prefill_size,
            schedule_policy=self.schedule_policy,
            new_token_ratio=SchedulerConfig.new_token_ratio * self.schedule_conservativeness,
            context_length=context_length,
            mixed_chunk=not self.disable_mixed_chunk,
        )

    @classmethod
    def from_kwargs(cls, **kwargs) -> ServerArgs:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown engine argument(s): {', '.join(unknown)}")
        return cls(**kwargs)
