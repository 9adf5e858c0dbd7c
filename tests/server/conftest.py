"""A real radixserve server process on a free port, shared by the end-to-end tests of a session."""

from __future__ import annotations

import pytest

from radixserve.server.launch import start_server, stop_server, wait_healthy


@pytest.fixture(scope="session")
def server_url(default_model_dir):
    process, url = start_server("--max-total-tokens", "8192", "--log-level", "warning")
    try:
        wait_healthy(url, process)
        yield url
    finally:
        stop_server(process)


@pytest.fixture
def client(server_url):
    from openai import OpenAI

    return OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0, timeout=120)
