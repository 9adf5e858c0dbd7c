"""Wiring: from ``ServerArgs`` to a loaded model, KV pool, backend, sampler, cache and scheduler."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from radixserve.attention import available_gpu_backend, create_backend
from radixserve.cache.prefix_cache import PrefixCache
from radixserve.config import ServerArgs
from radixserve.kernels import pdl
from radixserve.model.layers import Linear, prepack_cpu_linears
from radixserve.model.linear_tuning import tune_small_batch_linears
from radixserve.model.loader import load_model, resolve_model_path
from radixserve.model.model_config import ModelConfig
from radixserve.runner.cuda_graph import DecodeGraphRunner, kv_slot_capacity
from radixserve.runner.kv_pool import KVPool
from radixserve.runner.model_runner import ModelRunner
from radixserve.runner.piecewise_graph import PiecewiseGraphRunner
from radixserve.runner.sampler import Sampler
from radixserve.runner.slot_table import SlotTable
from radixserve.scheduler.scheduler import Scheduler
from radixserve.tokenizer.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# On CPU the pool lives in host RAM: never take more than this share of it by default.
_CPU_RAM_FRACTION = 0.15
_CPU_MAX_DEFAULT_TOKENS = 32768


@dataclass
class EngineParts:
    model_path: Path
    model_config: ModelConfig
    tokenizer: Tokenizer
    runner: ModelRunner
    scheduler: Scheduler
    cache: PrefixCache
    context_length: int
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r} (choose from auto, {', '.join(_DTYPES)})")
    return _DTYPES[name]


def _wants_pdl(args: ServerArgs, device: torch.device) -> bool:
    """Programmatic dependent launch: on by default on Hopper (9.x) with a Triton that has it, the
    cards it was built and measured on (CUDA-graph capture of PDL launches has failed elsewhere:
    sglang#18596, on SM 12.0); ``--disable-pdl`` turns it off; ``--enable-pdl`` requires it and
    says why it cannot run where it cannot."""
    if args.enable_pdl and args.disable_pdl:
        raise ValueError("--enable-pdl and --disable-pdl contradict each other: give one")
    if args.disable_pdl:
        return False
    # ROCm's torch reports its GPUs as "cuda" too, and MI200/MI300 as major 9: NVIDIA's only
    hopper = device.type == "cuda" and torch.version.hip is None and torch.cuda.get_device_capability(device)[0] == 9
    if args.enable_pdl and not hopper:
        raise ValueError("--enable-pdl needs a Hopper GPU (CUDA compute capability 9.x)")
    if args.enable_pdl and not pdl.supported():
        raise ValueError("--enable-pdl needs a Triton with triton.language.extra.cuda.gdc_wait (3.6 has it)")
    return hopper and pdl.supported()


def build_engine_parts(args: ServerArgs) -> EngineParts:
    _check_counts(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    pdl.enable(_wants_pdl(args, device))  # before any launch is captured in a graph
    try:
        return _build_parts(args, device, dtype)
    except BaseException:
        pdl.enable(False)  # a failed start leaves the process as it found it (shutdown does it after a good one)
        raise


def _build_parts(args: ServerArgs, device: torch.device, dtype: torch.dtype) -> EngineParts:
    torch.manual_seed(args.random_seed)
    model_path = resolve_model_path(args.model_path)
    model, model_config = load_model(model_path, load_format=args.load_format, dtype=dtype, device=device)
    if device.type == "cpu":
        prepack_cpu_linears(model)
    backend_name = _backend_name(args.attention_backend, device, dtype)
    if device.type == "cuda" and not args.disable_one_row_tuning:
        # before any graph captures the projections; timed as small decode steps will run them
        graphed = _graph_batch_limit(args, device, backend_name != "torch_native") > 0
        tune_small_batch_linears(model, Linear, graphed=graphed)
    tokenizer = load_tokenizer(args, model_path)
    context_length = args.context_length or model_config.max_position_embeddings
    # captured before the KV pool is sized, so that the pool gets what the pieces leave
    pieces = _piecewise_runner(args, model, model_config, dtype, device)
    pool_size = _pool_size(args, model_config, dtype, device, context_length)
    kv_pool = KVPool(
        pool_size + 1, model_config.num_layers, model_config.num_kv_heads, model_config.head_dim, dtype, device
    )
    backend = create_backend(
        backend_name,
        kv_pool,
        num_q_heads=model_config.num_heads,
        triton_decode_max_bs=args.triton_decode_max_bs,
        mixed_decode_split=args.mixed_decode_split,
        ragged_prefill=args.ragged_prefill,
    )
    if device.type == "cuda":
        backend.warmup(model_config.num_heads)
    sampler = Sampler(model_config.vocab_size, device=device, seed=args.random_seed)
    slot_table = SlotTable(args.max_running_requests + 1, min(context_length, pool_size) + 1, device)
    graphs = _graph_runner(args, model, backend, pool_size, context_length, device)
    if pieces is not None:
        pieces.backend = backend
    runner = ModelRunner(
        model,
        kv_pool,
        backend,
        sampler,
        tokenizer.vocab_size,
        slot_table=slot_table,
        graph_runner=graphs,
        piecewise_runner=pieces,
    )
    cache = PrefixCache(pool_size, disable_radix_cache=args.disable_radix_cache)
    scheduler = Scheduler(args.scheduler_config(context_length), cache)
    logger.info(
        "KV pool: %d tokens (%s, %s); context length %d; attention %s; decode CUDA graphs up to batch %s;"
        " piecewise CUDA graphs up to %s tokens",
        pool_size,
        dtype,
        device,
        context_length,
        backend_name,
        graphs.max_bs if graphs else "-",
        pieces.max_tokens if pieces else "-",
    )
    return EngineParts(model_path, model_config, tokenizer, runner, scheduler, cache, context_length, device, dtype)


def load_tokenizer(args: ServerArgs, model_path: Path) -> Tokenizer:
    """The tokenizer from ``--tokenizer-path`` or the model; EOS ids always also come from the model's configs."""
    config_dir = model_path if model_path.is_dir() else model_path.parent
    return Tokenizer.from_path(
        args.tokenizer_path or model_path, chat_template=args.chat_template, model_path=config_dir
    )


def _backend_name(name: str, device: torch.device, dtype: torch.dtype) -> str:
    if name != "auto":
        return name
    if device.type == "cuda":
        gpu = available_gpu_backend()
        if gpu == "flashinfer" and dtype not in (torch.float16, torch.bfloat16):
            gpu = "triton"  # FlashInfer's kernels are built for 16-bit K/V only
        return gpu or "torch_native"
    return "torch_native"


def _graph_batch_limit(args: ServerArgs, device: torch.device, backend_graphs: bool) -> int:
    """The largest decode batch replayed from a captured CUDA graph; 0: decode steps run eagerly."""
    if device.type != "cuda" or args.disable_cuda_graph or not backend_graphs:
        return 0
    return max(0, min(args.cuda_graph_max_bs, args.max_running_requests))


def _graph_runner(
    args: ServerArgs, model, backend, pool_size: int, max_seq_len: int, device: torch.device
) -> DecodeGraphRunner | None:
    max_bs = _graph_batch_limit(args, device, getattr(backend, "supports_cuda_graph", False))
    if not max_bs:
        return None
    graphs = DecodeGraphRunner(model, backend, max_bs, kv_slot_capacity(pool_size, max_bs, max_seq_len), device)
    graphs.capture()
    return graphs


def _check_counts(args: ServerArgs) -> None:
    """Flag values that cannot work, refused before the weights load."""
    if args.piecewise_cuda_graph_max_tokens < 0:
        raise ValueError(
            f"--piecewise-cuda-graph-max-tokens must be >= 0 (0: off), not {args.piecewise_cuda_graph_max_tokens}"
        )
    if args.mixed_decode_split < -1:
        raise ValueError(f"--mixed-decode-split must be >= 0 (0: off) or -1 (auto), not {args.mixed_decode_split}")


def _piecewise_runner(args: ServerArgs, model, config: ModelConfig, dtype, device) -> PiecewiseGraphRunner | None:
    """The piecewise graphs, up to the flag's token count or the largest step the scheduler can
    plan (a step holds at most one prefill budget of tokens, or one token per running request)."""
    if device.type != "cuda" or args.disable_cuda_graph or args.piecewise_cuda_graph_max_tokens == 0:
        return None
    largest_step = max(args.chunked_prefill_size, args.max_running_requests)
    max_tokens = min(args.piecewise_cuda_graph_max_tokens, largest_step)
    if max_tokens < args.piecewise_cuda_graph_max_tokens:
        logger.info("piecewise CUDA graphs up to %d tokens: no step can be larger", max_tokens)
    pieces = PiecewiseGraphRunner(model, None, max_tokens, device)
    pieces.capture(config.num_heads, config.head_dim, dtype)
    return pieces


def _pool_size(args: ServerArgs, config: ModelConfig, dtype: torch.dtype, device: torch.device, context: int) -> int:
    if args.max_total_tokens is not None:
        if args.max_total_tokens < 2:
            raise ValueError("--max-total-tokens must be at least 2")
        return args.max_total_tokens
    per_slot = KVPool.bytes_per_slot(config.num_layers, config.num_kv_heads, config.head_dim, dtype)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used_by_others = total - free  # weights are loaded by now
        budget = total * args.mem_fraction_static - used_by_others
        return max(int(budget // per_slot), context)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(min(int(ram * _CPU_RAM_FRACTION // per_slot), _CPU_MAX_DEFAULT_TOKENS), 256)
