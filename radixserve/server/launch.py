"""Start ``radixserve serve`` as a child process on a free port (tests and benchmarks share this)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(*flags: str, stderr=None) -> tuple[subprocess.Popen, str]:
    """Launch the server with ``flags``; returns the process and its base URL (not yet healthy).
    ``stderr``: where its log and stack dumps go (default: this process's stderr)."""
    port = free_port()
    cmd = [sys.executable, "-m", "radixserve", "serve", "--port", str(port), *flags]
    process = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=stderr)
    return process, f"http://127.0.0.1:{port}"


def dump_stacks(process: subprocess.Popen) -> None:
    """Make the server and its engine process print every thread's Python stack to their stderr
    (SIGUSR1, which both register with faulthandler): where a server that stopped answering is.
    Only once it has started (before its handler is registered, SIGUSR1 ends the process)."""
    for pid in [process.pid, *_engine_pids(process.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)


def _engine_pids(pid: int) -> list[int]:
    """Children of ``pid`` started by multiprocessing's spawn (the engine; not its resource tracker,
    which SIGUSR1 would kill)."""
    pids = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:  # exited meanwhile
                continue
            if b"spawn_main" in cmdline:
                pids.append(int(child))
    return pids


def health_status(url: str) -> int | None:
    """The /health status code, or None while nothing listens yet."""
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 240) -> list[int]:
    """Poll /health until 200; returns the statuses seen. Raises if the process dies or time runs out."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        status = health_status(url)
        if status is not None:
            seen.append(status)
            if status == 200:
                return seen
        time.sleep(0.05)
    raise RuntimeError("server did not become healthy")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
