"""Compiles, for a GPU this machine may not have, every Triton kernel variant the interpreter ran.

Triton's interpreter (the CPU runs of ``triton_interpreter`` tests) executes kernels as Python: it
accepts code the compiler rejects (the ninth session's helper with a string default built there and
failed 37 GPU tests). With ``RADIXSERVE_COMPILE_CHECK=1`` next to ``RADIXSERVE_TRITON_INTERPRET=1``
each interpreted launch is recorded, specialised as a GPU launch would be
(``bench.harness.triton_compile``). When the session ends, a subprocess without the interpreter
compiles every distinct one to a cubin for sm_90. A kernel that does not compile fails the session.

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


def enabled() -> bool:
    return os.environ.get("RADIXSERVE_COMPILE_CHECK") == "1"


def install(records: list[str]) -> None:
    from bench.harness import triton_compile

    triton_compile.install(records)


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


def _compile_all(path: str) -> int:
    from bench.harness.triton_compile import compile_record

    failed = 0
    for line in json.loads(Path(path).read_text()):
        record = json.loads(line)
        try:
            compile_record(record)
        except Exception as error:  # noqa: BLE001 -- every failure is reported, the rest still compile
            failed += 1
            message = " ".join(str(error).split())[-400:]  # the error itself comes after the source
            print(f"FAILED {record['module']}.{record['name']} {record['options']}: {message}", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(1 if _compile_all(sys.argv[1]) else 0)
