"""The import rules of ARCHITECTURE.md, checked on the source (every import, including lazy ones)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "radixserve"

# package -> radixserve packages it may import (itself always allowed)
ALLOWED = {
    "config": set(),
    "core": set(),
    "cache": {"core"},
    "scheduler": {"core", "cache", "config"},
    "model": {"attention.base", "kernels"},
    "attention": {"kernels"},
    "kernels": set(),
    "runner": {"model", "attention", "core", "config"},
    "constrained": {"core"},
    "tokenizer": {"core"},
    "engine": {"*"},
    "server": {"engine", "core", "config", "tokenizer"},
}
PURE = {"core", "cache", "scheduler", "config"}
HEAVY = {"torch", "numpy", "triton", "flashinfer", "xgrammar", "aiohttp"}
ONLY_IN = {"xgrammar": {"constrained"}, "aiohttp": {"server"}, "flashinfer": {"attention", "runner"}}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            pytest.fail(f"{path}: relative imports are not used in this codebase")
    return names


def _owner(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if rel.parts else ""


def _violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        owner = _owner(path)
        if owner not in ALLOWED:
            continue
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "radixserve":
                found += _check_internal(path, owner, name)
            elif owner in PURE and top in HEAVY:
                found.append(f"{path.name}: pure package {owner} imports {top}")
            elif top in ONLY_IN and owner not in ONLY_IN[top]:
                found.append(f"{path.name}: only {ONLY_IN[top]} may import {top} ({owner} does)")
    return found


def _check_internal(path: Path, owner: str, name: str) -> list[str]:
    target = name.split(".", 1)[1] if "." in name else ""
    allowed = ALLOWED[owner]
    if not target or "*" in allowed or target.split(".")[0] == owner:
        return []
    if any(target == a or target.startswith(a + ".") or a == target.split(".")[0] for a in allowed):
        return []
    return [f"{path.relative_to(PACKAGE)}: {owner} may not import radixserve.{target}"]


def test_import_rules_hold():
    assert _violations() == []


def test_checker_catches_a_violation(tmp_path, monkeypatch):
    bad = PACKAGE / "cache" / "_tmp_violation_probe.py"
    bad.write_text("import torch\nfrom radixserve.runner import kv_pool\n")
    try:
        found = _violations()
    finally:
        bad.unlink()
    assert any("pure package cache imports torch" in v for v in found)
    assert any("cache may not import radixserve.runner" in v for v in found)


def test_import_radixserve_is_light():
    code = (
        "import sys, radixserve, radixserve.core, radixserve.cache, radixserve.scheduler; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
