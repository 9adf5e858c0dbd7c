"""Compiles, for a GPU this machine may not have, every Triton kernel variant the interpreter ran.

Triton's interpreter (the CPU runs of ``triton_interpreter`` tests) executes kernels as Python: it
accepts code the compiler rejects (the ninth session's helper with a string default built there and
failed 37 GPU tests). With ``RADIXSERVE_COMPILE_CHECK=1`` next to ``RADIXSERVE_TRITON_INTERPRET=1``
each interpreted launch is recorded (kernel, argument types, constexpr values, warps, stages) and,
when the session ends, a subprocess without the interpreter compiles every distinct one to a cubin
for sm_90 (ptxas ships in the triton wheel; no driver is needed). A kernel that does not compile
fails the session.

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


def _describe(value):
    """An argument as JSON: tensors by element type, scalars by kind and value."""
    import torch
    import triton.language as tl

    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, tl.dtype):
        return {"tl_dtype": str(value)}
    if isinstance(value, tl.constexpr):
        value = value.value
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"compile check: cannot describe a {type(value).__name__} argument")


def install(records: list[str]) -> None:
    """Wraps the interpreter's launch so that each launch appends its description to ``records``."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        options = {name: kwargs[name] for name in OPTIONS if name in kwargs}
        named = {k: v for k, v in kwargs.items() if k in self.arg_names}
        params = dict(zip(self.arg_names, args)) | named
        records.append(
            json.dumps(
                {
                    "module": self.fn.__module__,
                    "name": self.fn.__name__,
                    "args": {name: _describe(value) for name, value in params.items()},
                    "options": options,
                },
                sort_keys=True,
            )
        )
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


def _signature(kernel, args: dict) -> tuple[dict, dict]:
    import triton.language as tl

    signature, constexprs = {}, {}
    for index, param in enumerate(kernel.params):
        arg = args.get(param.name)
        if arg is None:  # a parameter left at its default
            continue
        if "tensor" in arg:
            dtype = arg["tensor"]
            code = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "bool": "i1"}.get(dtype)
            signature[param.name] = "*" + (code or dtype.replace("int", "i").replace("ui", "u"))
            continue
        value = getattr(tl, arg["tl_dtype"]) if "tl_dtype" in arg else arg["value"]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[(index,)] = value
        elif value is None:
            signature[param.name] = "constexpr"
            constexprs[(index,)] = None
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        else:
            signature[param.name] = "fp32"
    return signature, constexprs


def _compile_all(path: str) -> int:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failed = 0
    for line in json.loads(Path(path).read_text()):
        record = json.loads(line)
        kernel = getattr(importlib.import_module(record["module"]), record["name"])
        try:
            signature, constexprs = _signature(kernel, record["args"])
            source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
            triton.compile(source, target=GPUTarget(*TARGET), options=record["options"])
        except Exception as error:  # noqa: BLE001 -- every failure is reported, the rest still compile
            failed += 1
            message = " ".join(str(error).split())[-400:]  # the error itself comes after the source
            print(f"FAILED {record['module']}.{record['name']} {record['options']}: {message}", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(1 if _compile_all(sys.argv[1]) else 0)
