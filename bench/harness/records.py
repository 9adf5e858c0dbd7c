"""Result records: one JSON line per workload per run, appended to ``bench/results/<workload>.jsonl``.

Every record has the keys in ``RECORD_KEYS`` (null where a figure does not apply) plus whatever
extra keys the bench adds (hit_rate, cache, policy, ...).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
REPO_ROOT = Path(__file__).resolve().parents[2]
RECORD_KEYS = (
    "workload",
    "model",
    "card",
    "commit",
    "date",
    "num_requests",
    "output_tok_s",
    "total_tok_s",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "itl_p50_ms",
    "tpot_p50_ms",
    "roofline_output_tok_s",
    "hf_output_tok_s",
    "notes",
)


def git_commit() -> str:
    """``git rev-parse --short HEAD``, with ``+dirty`` when tracked files differ from it.

    ``BENCH_COMMIT`` overrides it (for a copy of the tree without ``.git``).
    """
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def make_record(workload: str, model: str, card: str, commit: str, summary: dict, **extra) -> dict:
    """A record: the required keys first (null unless given), then the summary's figures and ``extra``."""
    record = {key: None for key in RECORD_KEYS}
    record.update(summary)
    record.update(workload=workload, model=model, card=card, commit=commit, date=utc_now())
    record.update(extra)
    return record


def append_record(record: dict, results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{record['workload']}.jsonl"
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    return path
