"""Compiling Triton kernels for a GPU this machine may not have, from launches Triton's interpreter ran.

``install`` records each interpreted launch: the kernel, its arguments specialised as Triton's
launcher specialises them on a GPU (the type, or ``constexpr`` for an integer 1 or None, and ``D``
where it is divisible by 16 / 16-byte aligned; the kernel's ``do_not_specialize`` lists honoured),
warps and stages. ``compile_record``, in a process without the interpreter, compiles one to a cubin
for sm_90 (ptxas ships in the triton wheel; no driver is needed), and ``resources`` reads its
registers, spills and shared memory. Used by the tests' compile check (``tests/gpu/compile_check``)
and by ``bench.kernel_resources``.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

TARGET = ("cuda", 90, 32)  # sm_90 (H100 / H200), warp size 32
OPTIONS = ("num_warps", "num_stages", "launch_pdl")


def _constant(value):
    """A constexpr argument as JSON."""
    import triton.language as tl

    if isinstance(value, tl.dtype):
        return {"tl_dtype": value.name}
    if isinstance(value, tl.constexpr):
        value = value.value
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"cannot record a {type(value).__name__} constexpr")


def describe(fn, options: dict, arg_names: list[str], params: dict) -> dict:
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


def install(records: list[str]):
    """Wraps the interpreter's launch so that each launch appends its description to ``records``;
    returns a function that puts the previous launch back."""
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        options = {name: kwargs[name] for name in OPTIONS if name in kwargs}
        named = {k: v for k, v in kwargs.items() if k in self.arg_names}
        params = dict(zip(self.arg_names, args)) | named
        try:
            record = describe(self, options, self.arg_names, params)
        except Exception as error:  # noqa: BLE001 -- reported with the compile failures, not as this test's
            record = {"module": self.fn.__module__, "name": self.fn.__name__, "unsupported": str(error)}
        records.append(json.dumps(record, sort_keys=True))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run

    def restore() -> None:
        InterpretedFunction.run = run

    return restore


def source(kernel, record: dict):
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


def compile_record(record: dict):
    """The compiled kernel (``triton.compile``) of a recorded launch, for sm_90."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget

    kernel = getattr(importlib.import_module(record["module"]), record["name"])
    return triton.compile(source(kernel, record), target=GPUTarget(*TARGET), options=record["options"])


def resources(compiled) -> dict:
    """Registers a thread, stack (spill) bytes a thread and shared memory bytes a program of a
    compiled kernel, read from its cubin with the wheel's ``cuobjdump``."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run(
            [str(cuobjdump), "--dump-resource-usage", cubin.name], capture_output=True, text=True, check=True
        ).stdout
    registers, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    return {"registers": int(registers), "spill_bytes": int(stack), "shared_bytes": int(compiled.metadata.shared)}
