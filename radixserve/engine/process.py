"""The engine in its own process: messages in, batched outputs out, over one duplex pipe.

Protocol (tuples, pickled by multiprocessing):
    to the engine:   ("add", request_id, prompt_ids, sampling_dict, extra_key, stream)
                     ("abort", request_id) | ("call", token, method_name)
    from the engine: ("ready", info_dict) | ("outputs", [RequestOutput, ...])
                     ("rejected", request_id, param, message) | ("reply", token, value) | ("fatal", message)

All messages waiting in the pipe are drained before each step, and every output of a step goes
back as one message, so the IPC cost is one round trip per step, not per request. A request added
with ``stream`` false sends its first output with tokens and then only its finishing one, which
carries everything since (``output_coalescing.py``).
"""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from radixserve.config import ServerArgs
from radixserve.core.sampling_params import InvalidParamError, SamplingParams
from radixserve.engine.output_coalescing import OutputCoalescer

logger = logging.getLogger(__name__)


def engine_main(args: ServerArgs, conn: Connection) -> None:
    logging.basicConfig(level=args.log_level.upper(), format="[%(asctime)s engine] %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stack dumps on demand, as the server
    try:
        from radixserve.engine.engine_core import EngineCore

        core = EngineCore(args)
    except Exception as exc:  # report load failures to the server instead of dying silently
        conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", engine_info(core)))
    try:
        _loop(core, conn)
    except (EOFError, OSError, KeyboardInterrupt):
        return  # the server went away (closed pipe, reset connection): nothing left to serve
    except Exception:
        conn.send(("fatal", traceback.format_exc()))
        raise


def engine_info(core) -> dict:
    return {
        "context_length": core.context_length,
        "vocab_size": core.vocab_size,
        "max_total_tokens": core.cache.pool_size,
        "model_path": str(core.parts.model_path),
        "device": str(core.parts.device),
        "dtype": str(core.parts.dtype).removeprefix("torch."),
        "generation_defaults": generation_defaults(core.parts.model_path),
    }


_SAMPLING_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def generation_defaults(model_path: Path) -> dict:
    """Sampling defaults from the model's generation_config.json (what the model's authors recommend)."""
    config_path = (model_path if model_path.is_dir() else model_path.parent) / "generation_config.json"
    if not config_path.is_file():
        return {}
    config = json.loads(config_path.read_text())
    return {key: config[key] for key in _SAMPLING_DEFAULT_KEYS if config.get(key) is not None}


def _loop(core, conn: Connection) -> None:
    coalescer = OutputCoalescer()
    while True:
        if not core.has_work:
            conn.poll(None)  # idle: block until a message arrives
        while conn.poll(0):
            _handle(core, conn, conn.recv(), coalescer)
        if core.has_work:
            outputs = coalescer.filter(core.step())
            if outputs:
                conn.send(("outputs", outputs))


def _handle(core, conn: Connection, message: tuple, coalescer: OutputCoalescer) -> None:
    kind = message[0]
    if kind == "add":
        _, request_id, prompt_ids, sampling_dict, extra_key, stream = message
        try:
            core.add_request(request_id, prompt_ids, SamplingParams.from_dict(sampling_dict), extra_key, stream)
        except InvalidParamError as exc:
            conn.send(("rejected", request_id, exc.param, str(exc)))
            return
        if not stream:
            coalescer.hold(request_id)
    elif kind == "abort":
        output = core.abort(message[1])
        if output is not None:
            conn.send(("outputs", coalescer.filter([output])))
    elif kind == "call":
        _, token, method = message
        conn.send(("reply", token, _call(core, method)))
    else:
        logger.warning("unknown engine message %r", kind)


def _call(core, method: str):
    if method == "flush_cache":
        return core.flush_cache()
    if method == "stats":
        return core.stats()
    if method == "check_invariants":
        core.check_invariants()
        return True
    raise ValueError(f"unknown engine call {method!r}")
