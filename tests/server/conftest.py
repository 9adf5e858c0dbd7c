"""A real radixserve server process on a free port, shared by the end-to-end tests of a session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become healthy")


@pytest.fixture(scope="session")
def server_url(default_model_dir):
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "radixserve",
        "serve",
        "--port",
        str(port),
        "--max-total-tokens",
        "8192",
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def client(server_url):
    from openai import OpenAI

    return OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0, timeout=120)
