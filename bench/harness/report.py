"""What every bench does with a finished run: summarize, compare with roofline and HF, record."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.harness.latency_stats import summarize
from bench.harness.records import append_record, git_commit, make_record
from bench.harness.table import percent


@dataclass
class Reporter:
    model: str
    card: str
    preset: str
    notes: str
    results_dir: Path
    write: bool
    commit: str = ""

    @classmethod
    def from_args(cls, args: argparse.Namespace, model: str, card: str) -> Reporter:
        return cls(model, card, args.preset, args.notes, args.results_dir, not args.no_record, git_commit())

    def record(self, workload: str, summary: dict, notes: str = "", **extra) -> dict:
        """Build the record (``notes`` joined to the run's ``--notes``) and append it unless --no-record.
        A run in which requests failed says so in its notes and on stderr: its figures cover only
        the requests that completed."""
        failed = failure_note(summary)
        if failed:
            print(f"WARNING: {workload}: {failed}", file=sys.stderr)
        text = "; ".join(part for part in (failed, notes, self.notes) if part)
        record = make_record(
            workload, self.model, self.card, self.commit, summary, notes=text, preset=self.preset, **extra
        )
        if self.write:
            path = append_record(record, self.results_dir)
            print(f"recorded {workload} -> {path}")
        return record


def failure_note(summary: dict) -> str:
    """``"FAILED: 911 of 1024 requests did not complete"``, or "" when every request completed."""
    total, done = summary.get("num_requests"), summary.get("num_completed")
    if total is None or done is None or done >= total:
        return ""
    return f"FAILED: {total - done} of {total} requests did not complete"


def offline_summary(case, roofline=None, phase_sum=None) -> dict:
    """latency_stats summary of an engine case, plus its roofline figures when given, and its share
    of the phase-sum bound (``ModelShape.decode_step_seconds(phases=True)``) when given."""
    summary = summarize(case.timings, case.duration)
    summary["num_retractions"] = case.num_retractions
    if roofline is not None:
        summary["roofline_output_tok_s"] = round(roofline.output_tok_s, 2)
        summary["pct_of_roofline"] = percent(summary["output_tok_s"], roofline.output_tok_s)
        summary["roofline"] = {
            "seconds": round(roofline.seconds, 3),
            "prefill_s": round(roofline.prefill_seconds, 3),
            "decode_s": round(roofline.decode_seconds, 3),
            "decode_steps": roofline.num_decode_steps,
            "mean_batch": round(roofline.mean_batch, 1),
        }
    if phase_sum is not None:
        summary["phase_sum_output_tok_s"] = round(phase_sum.output_tok_s, 2)
        summary["pct_of_phase_sum"] = percent(summary["output_tok_s"], phase_sum.output_tok_s)
    return summary
