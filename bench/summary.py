"""Print the latest record of every ``<workload>.jsonl`` in a results directory as one table.

python -m bench.summary [bench/results]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (
    ("workload", "workload", "{}"),
    ("output_tok_s", "out tok/s", "{:.0f}"),
    ("total_tok_s", "total tok/s", "{:.0f}"),
    ("roofline_output_tok_s", "roofline out", "{:.0f}"),
    ("hf_output_tok_s", "HF out", "{:.0f}"),
    ("ttft_p50_ms", "TTFT p50 ms", "{:.1f}"),
    ("itl_p50_ms", "ITL p50 ms", "{:.2f}"),
    ("tpot_p50_ms", "TPOT p50 ms", "{:.2f}"),
)


def latest_records(directory: Path) -> list[dict]:
    records = []
    for path in sorted(directory.glob("*.jsonl")):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines:
            records.append(json.loads(lines[-1]))
    return records


def format_table(records: list[dict]) -> str:
    rows = [[title for _, title, _ in COLUMNS]]
    for record in records:
        rows.append([_cell(record.get(key), fmt) for key, _, fmt in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)


def _cell(value, fmt: str) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def main() -> None:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
    records = latest_records(directory)
    if records:
        card = records[-1].get("card", "?")
        commit = records[-1].get("commit", "?")
        print(f"latest records in {directory} ({card}, commit {commit}):")
        print(format_table(records))


if __name__ == "__main__":
    main()
