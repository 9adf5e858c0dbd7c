"""Small-batch projections on CUDA: pick, per weight shape and row count, the fastest of a few equivalent calls.

A batch-1 decode step is the weight read, and cuBLAS does not read every shape at the card's
bandwidth through ``F.linear``: ``bench.gemv_probe`` measured Llama-3.1-8B's output projection
(4096 x 4096) at 1.26 TB/s on an H200 against 3.7-4.3 for the MLP and the LM head. The same product
can be asked of cuBLAS in other forms, which it serves with other kernels, or of our own GEMV:

- ``linear``: ``F.linear(x, W)`` (the default);
- ``mv``: ``torch.mv(W, x[0])``, a matrix-vector product (cuBLAS gemv);
- ``mm_t``: ``(W @ x.T).T``, the GEMM with the operands swapped (a tall-skinny product);
- ``gemv BxW``: our Triton GEMV (``radixserve.kernels.gemv``: B rows of W a program over the whole
  of K in one load, W warps), in each launch ``gemv.configs(K)`` offers, where Triton is installed.

A decode step of a few sequences (2 to 64 rows) is still mostly the weight read, and cuBLAS adds a
split-K reduce kernel to the short-N shapes there too. For those the forms are ``linear`` and
``few BNxBK``, our few-row kernel (``radixserve.kernels.few_rows``: the product swapped so that
W's rows fill the tensor-core tile, K split S ways where the shape is short, the splits adding
themselves up), timed at both ends of 2-16, 17-32 and 33-64 rows (its row blocks); each choice
serves inputs of that many rows.

``tune_small_batch_linears`` times each form on every distinct weight shape of a model at startup,
cycling through all the model's weights of that shape (a 32-layer model reads 32 different
matrices, so the timing misses the L2 cache as a real step does), replayed from a CUDA graph as a
decode step runs them (eagerly where decode steps run eagerly), and sets each ``Linear``'s
``small_rows`` forms where one beats ``linear`` by ``MIN_GAIN``. ``Linear.forward`` uses them for
inputs of 1 to 64 rows (small decode steps, CUDA-graph captured or not); every other input takes
``F.linear``. The forms compute the same dot products; only the summation order may differ. Each
is checked against ``F.linear`` on the model's own weights before it is timed (``check_form``):
one that computes something else on this GPU is left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

# A form replaces F.linear only if it takes at most this share of F.linear's time.
MIN_GAIN = 0.95
ITERATIONS = 20  # timed passes over all the weights of a shape


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.linear(x, w)


def one_row_forms(k: int | None = None) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """``name -> f(x [1, K], W [N, K]) -> [1, N]``: the candidate forms of ``x @ W.T``; with ``k``,
    also the Triton GEMV's launches for that K (none without Triton)."""
    forms = {
        "linear": _linear,
        "mv": lambda x, w: torch.mv(w, x[0]).unsqueeze(0),
        "mm_t": lambda x, w: torch.mm(w, x.t()).t(),
    }
    if k is not None:
        forms.update(gemv_forms(k))
    return forms


def gemv_forms(k: int) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """``gemv BxW -> f``: the Triton GEMV in each of its launches for K (none without Triton)."""
    try:
        from radixserve.kernels import gemv
    except ImportError:  # no triton: cuBLAS's forms only
        return {}
    return {
        f"gemv {block_n}x{num_warps}": lambda x, w, config=(block_n, num_warps): gemv.gemv(x, w, config)
        for block_n, num_warps in gemv.configs(k)
    }


def few_row_forms(n: int, k: int, device: torch.device) -> dict[str, Callable]:
    """``few BNxBK -> f(x [2..64, K], W [N, K])``: the few-row kernel (``radixserve.kernels.few_rows``)
    in each of its launches for the shape (none without Triton)."""
    try:
        from radixserve.kernels import few_rows
    except ImportError:  # no triton: F.linear only
        return {}
    return {f"few {c[0]}x{c[1]}": few_rows.FewRows(n, k, c, device) for c in few_rows.CONFIGS}


def choose(times_us: dict[str, float], min_gain: float = MIN_GAIN, ends: tuple[dict, ...] = ()) -> str:
    """The fastest form, unless it saves less than ``1 - min_gain`` of ``linear``'s time, or is
    slower than ``linear`` in any of ``ends`` (the timings ``times_us`` sums, when it does)."""
    best = min(times_us, key=times_us.get)
    if times_us[best] > min_gain * times_us["linear"] or any(end[best] > end["linear"] for end in ends):
        return "linear"
    return best


def tune_small_batch_linears(
    model: nn.Module, linear_type: type, graphed: bool = True
) -> dict[tuple[int, int, int], dict[str, float]]:
    """Time every form on every distinct bias-free weight shape of ``model``'s CUDA ``linear_type``
    modules, for one row and for each few-row range at the fewest and the most rows it serves (a
    form must win at both ends); set their ``small_rows`` and return ``{(N, K, most rows): {form:
    µs}}`` (the two ends' sum where there are two). ``graphed``: decode steps replay CUDA graphs, so
    the forms are timed from graphs; without them, eagerly (a Triton launch's host cost is then part
    of what a step pays)."""
    groups: dict[tuple, list[nn.Module]] = {}
    for module in model.modules():
        if isinstance(module, linear_type) and module.bias is None and module.weight.is_cuda:
            groups.setdefault((tuple(module.weight.shape), module.weight.dtype), []).append(module)
    results = {}
    started = time.perf_counter()
    timer = GraphTimer(next(iter(groups.values()))[0].weight.device) if graphed and groups else None
    try:
        for (shape, dtype), modules in groups.items():
            weights = [m.weight.detach() for m in modules]
            buckets = []
            for fewest, most, forms in _ranges(shape, weights[0].device):
                ends = [
                    _time_forms(
                        forms, torch.randn(rows, shape[1], dtype=dtype, device=weights[0].device), weights, timer
                    )
                    for rows in dict.fromkeys((fewest, most))
                ]
                times = {name: sum(end[name] for end in ends) for name in ends[0] if all(name in end for end in ends)}
                chosen = choose(times, ends=tuple(ends) if len(ends) > 1 else ())
                buckets.append((most, None if chosen == "linear" else forms[chosen]))
                results[(*shape, most)] = times
                _log(shape, fewest, most, len(modules), times, chosen)
            for module in modules:
                module.small_rows = tuple(buckets)
    finally:
        del timer  # its graphs' memory pool, before the KV pool is sized from what is free
        torch.cuda.empty_cache()
    logger.info("projection forms of %d weight shapes timed in %.1f s", len(groups), time.perf_counter() - started)
    return results


def _ranges(shape: tuple[int, int], device: torch.device) -> list[tuple[int, int, dict]]:
    """``(fewest rows, most rows, forms)``: one row with ``one_row_forms``, then each of the few-row
    kernel's row blocks (2-16, 17-32, 33-64) with ``F.linear`` and its launches (none without Triton)."""
    ranges = [(1, 1, one_row_forms(shape[1]))]
    few = few_row_forms(*shape, device)
    if few:
        from radixserve.kernels.few_rows import ROW_BLOCKS

        fewest = 2
        for most in ROW_BLOCKS:
            ranges.append((fewest, most, {"linear": _linear, **few}))
            fewest = most + 1
    return ranges


def _time_forms(forms: dict, x: torch.Tensor, weights: list[torch.Tensor], timer) -> dict[str, float]:
    """``{form: µs}`` of every form that runs and computes what ``F.linear`` does on the model's
    own first weight (``check_form``). One that fails, e.g. a Triton that cannot build a kernel
    here or builds a wrong one, is left out with a warning; ``linear`` must run."""
    times = {}
    for name, form in forms.items():
        try:
            if name != "linear":
                check_form(form, x, weights[0])
            times[name] = _time_us(form, x, weights, timer)
        except Exception as exc:
            if name == "linear":
                raise
            logger.warning("projection form %s left out for %s: %s", name, tuple(weights[0].shape), exc)
    return times


# the largest relative error a form may show against F.linear (bf16 rounds the output to ~4e-3)
CHECK_TOLERANCE = 2e-2


@torch.inference_mode()
def check_form(form, x: torch.Tensor, w: torch.Tensor) -> None:
    """Raises ``ArithmeticError`` unless ``form(x, w)`` is ``F.linear(x, w)`` within
    ``CHECK_TOLERANCE`` (relative, over the whole output; NaN fails): a kernel that compiles
    wrongly on this GPU never serves a request."""
    want = F.linear(x, w).float()
    got = form(x, w).float()
    if got.shape != want.shape:
        raise ArithmeticError(f"shape {tuple(got.shape)} against F.linear's {tuple(want.shape)}")
    error = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
    if not error <= CHECK_TOLERANCE:
        raise ArithmeticError(f"relative error {error:.2e} against F.linear")


def _log(shape, fewest: int, most: int, count: int, times: dict[str, float], chosen: str) -> None:
    logger.info(
        "%s projections %dx%d (%d weights): %s; using %s",
        "one-row" if most == 1 else f"{fewest}- and {most}-row",
        shape[0],
        shape[1],
        count,
        ", ".join(f"{name} {us:.1f} us" for name, us in times.items()),
        chosen,
    )


@torch.inference_mode()
def _time_us(form, x: torch.Tensor, weights: list[torch.Tensor], timer: GraphTimer | None) -> float:
    """Mean µs of one call, the weights taken in turn: replayed from a CUDA graph with ``timer``,
    else launched eagerly."""

    def run() -> None:
        for w in weights:
            form(x, w)

    if timer is not None:
        return timer.time_us(run, ITERATIONS) / len(weights)
    return eager_time_us(run, ITERATIONS, x.device) / len(weights)


class GraphTimer:
    """Times a call sequence replayed from a CUDA graph. A decode step's projections run from a
    captured graph, launch after launch with no host work between; timed eagerly, a small kernel
    would be timed by its launch's host cost instead (a Triton launch costs ~20 µs of Python, more
    than a 4096 x 4096 projection takes on an H200). Every graph is captured on one side stream,
    warmed up there first (cuBLAS keeps a workspace per stream), into one memory pool."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.pool = torch.cuda.graph_pool_handle()

    def time_us(self, run: Callable[[], object], replays: int) -> float:
        """Mean µs of one replay of a graph of ``run()``."""
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            run()  # warm-up outside the capture: compiles, cuBLAS heuristics, handles and workspace
        current.wait_stream(self.stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            run()
        return eager_time_us(graph.replay, replays, self.device)


def eager_time_us(run: Callable[[], object], replays: int, device: torch.device) -> float:
    """Mean µs of one ``run()`` on the current stream, after one untimed call."""
    run()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        run()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) * 1e3 / replays
