"""The short table every bench prints last."""

from __future__ import annotations


def format_value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(rows: list[dict], columns: list[tuple[str, str]], title: str | None = None) -> None:
    """``columns`` is ``[(key, header), ...]``; the first column is left-aligned, the rest right."""
    cells = [[format_value(row.get(key)) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [
        max(len(headers[i]), *(len(c[i]) for c in cells)) if cells else len(headers[i]) for i in range(len(columns))
    ]
    if title:
        print(f"\n{title}")
    print("  ".join(_align(h, w, i) for i, (h, w) in enumerate(zip(headers, widths))))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(_align(c, w, i) for i, (c, w) in enumerate(zip(row, widths))))


def _align(text: str, width: int, column: int) -> str:
    return text.ljust(width) if column == 0 else text.rjust(width)


def percent(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return round(100.0 * part / whole, 1)
