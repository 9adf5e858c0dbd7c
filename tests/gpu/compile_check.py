"""Compiles, for a GPU this machine may not have, every Triton kernel variant the interpreter ran.

Triton's interpreter (the CPU runs of ``triton_interpreter`` tests) executes kernels as Python: it
accepts code the compiler rejects (the ninth session's helper with a string default built there and
failed 37 GPU tests). With ``RADIXSERVE_COMPILE_CHECK=1`` next to ``RADIXSERVE_TRITON_INTERPRET=1``
each interpreted launch is recorded (kernel, arguments specialised as a GPU launch would, warps,
stages). When the session ends, a subprocess without the interpreter compiles every distinct one to
a cubin for sm_90 (ptxas ships in the triton wheel; no driver is needed). A kernel that does not
compile fails the session.

    python -m tests.gpu.compile_check RECORDS.json   # the subprocess: prints one line per failure
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = ("cuda", 90, 32)  # sm_90 (H100 / H200), warp size 32
OPTIONS = ("num_warps", "num_stages")


def enabled() -> bool:
    return os.environ.get("RADIXSERVE_COMPILE_CHECK") == "1"


def _constant(value):
    """A constexpr argument as JSON."""
    import triton.language as tl

    if isinstance(value, tl.dtype):
        return {"tl_dtype": value.name}
    if isinstance(value, tl.constexpr):
        value = value.value
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"compile check: cannot record a {type(value).__name__} constexpr")


def _describe(fn, options: dict, arg_names: list[str], params: dict) -> dict:
    """A launch as JSON: each argument as Triton's launcher specialises it on a GPU (its type, or
    ``constexpr`` for an integer 1 or None, and ``D`` where it is divisible by 16 / 16-byte aligned),
    honouring the kernel's ``do_not_specialize`` lists."""
    import inspect

    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    annotations = {name: str(p.annotation) for name, p in inspect.signature(fn.fn).parameters.items()}
    dns = set(fn.kwargs.get("do_not_specialize") or ())
    dns_oa = set(fn.kwargs.get("do_not_specialize_on_alignment") or ())
    args = {}
    for index, name in enumerate(arg_names):
        if name not in params:  # left at its default: filled in by the compiling side
            continue
        value = params[name]
        if "constexpr" in annotations[name]:
            args[name] = {"constexpr": _constant(value)}
            continue
        specialize = name not in dns and index not in dns
        align = name not in dns_oa and index not in dns_oa
        kind, attr = native_specialize_impl(BaseBackend, value, False, specialize, align)
        args[name] = {"type": kind, "attr": attr or ""}
        if kind == "constexpr":
            args[name]["constexpr"] = _constant(value)
    return {"module": fn.fn.__module__, "name": fn.fn.__name__, "args": args, "options": options}


def install(records: list[str]) -> None:
    """Wraps the interpreter's launch so that each launch appends its description to ``records``."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        options = {name: kwargs[name] for name in OPTIONS if name in kwargs}
        named = {k: v for k, v in kwargs.items() if k in self.arg_names}
        params = dict(zip(self.arg_names, args)) | named
        try:
            record = _describe(self, options, self.arg_names, params)
        except Exception as error:  # noqa: BLE001 -- reported with the compile failures, not as this test's
            record = {"module": self.fn.__module__, "name": self.fn.__name__, "unsupported": str(error)}
        records.append(json.dumps(record, sort_keys=True))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run


def check(records: list[str]) -> tuple[int, list[str]]:
    """Compiles the distinct recorded launches in a subprocess: (how many, the failures)."""
    distinct = sorted(set(records))
    if not distinct:
        return 0, []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(distinct, f)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RADIXSERVE_TRITON_INTERPRET")}
    done = subprocess.run(
        [sys.executable, "-m", "tests.gpu.compile_check", f.name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    os.unlink(f.name)
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAILED ")]
    if done.returncode and not failures:
        failures = [f"FAILED the compile check itself: {done.stderr[-2000:]}"]
    return len(distinct), failures


def _source(kernel, record: dict):
    """Triton's ASTSource for a recorded launch: signature, constexprs and divisibility attributes."""
    import triton.language as tl
    from triton.backends.compiler import BaseBackend
    from triton.compiler import ASTSource

    if "unsupported" in record:
        raise TypeError(record["unsupported"])
    args = record["args"]
    signature, constexprs, attrs = {}, {}, {}
    for index, param in enumerate(kernel.params):
        arg = args.get(param.name)
        if arg is None:  # left at its default
            if not param.has_default:
                raise TypeError(f"no value recorded for {param.name}")
            default = param.default
            value = default.value if isinstance(default, tl.constexpr) else default
            arg = {"constexpr": {"value": value}} if param.is_constexpr or value is None else None
            if arg is None:
                raise TypeError(f"{param.name}: a non-constexpr default is not supported")
        if "constexpr" in arg:
            constant = arg["constexpr"]
            signature[param.name] = "constexpr"
            constexprs[(index,)] = tl.dtype(constant["tl_dtype"]) if "tl_dtype" in constant else constant["value"]
        else:
            signature[param.name] = arg["type"]
            if arg["attr"]:
                attrs[(index,)] = BaseBackend.parse_attr(arg["attr"])
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)


def _compile_all(path: str) -> int:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget

    failed = 0
    for line in json.loads(Path(path).read_text()):
        record = json.loads(line)
        kernel = getattr(importlib.import_module(record["module"]), record["name"])
        try:
            triton.compile(_source(kernel, record), target=GPUTarget(*TARGET), options=record["options"])
        except Exception as error:  # noqa: BLE001 -- every failure is reported, the rest still compile
            failed += 1
            message = " ".join(str(error).split())[-400:]  # the error itself comes after the source
            print(f"FAILED {record['module']}.{record['name']} {record['options']}: {message}", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(1 if _compile_all(sys.argv[1]) else 0)
