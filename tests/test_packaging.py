"""The Makefile installs from requirements/*.txt; pyproject.toml must declare the same packages."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _names(specs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", spec.strip(), maxsplit=1)[0].lower() for spec in specs if spec.strip()}


def _requirements(name: str) -> set[str]:
    lines = (ROOT / "requirements" / name).read_text().splitlines()
    return _names([line for line in lines if line.strip() and not line.startswith("#")])


def test_runtime_requirements_match_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"])
    # torch and xgrammar are installed by the Makefile itself (CPU torch first; xgrammar without triton);
    # pydantic, apache-tvm-ffi and typing-extensions are xgrammar's own needs, listed because of --no-deps.
    assert declared - {"torch", "xgrammar"} == _requirements("runtime.txt") - {
        "pydantic",
        "apache-tvm-ffi",
        "typing-extensions",
    }
    assert _requirements("test.txt") == _names(project["optional-dependencies"]["test"])
