"""A device-side copy of each running sequence's slot list, so a step uploads only what changed.

Building ``kv_slots`` from Python lists costs O(total context) host work and bytes per step (a
batch of 1,000 decodes over 400-token contexts is 400k ints every step). Instead each sequence owns
a row of ``table [num_rows, max_context]`` (int32, on the model's device) holding its slots; a
decode step writes one new entry per sequence, and the flat ``kv_slots`` of the step is gathered on
the device.

A row is trusted only while the request's ``slots_version`` is unchanged: a dedup swap, truncate
or release bumps it and the row is rewritten from position 0. Rows are claimed on first sight and
reclaimed, least recently used first, from sequences absent from the current step; a reclaimed
sequence that comes back simply gets a fresh row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixserve.attention.upload import to_device
from radixserve.core.plan import SequencePlan


@dataclass
class _Row:
    index: int
    num_synced: int  # slots[:num_synced] are in the table
    version: int
    last_step: int


class SlotTable:
    def __init__(self, num_rows: int, max_context: int, device: torch.device):
        self.max_context = max_context
        self.device = device
        self.table = torch.zeros(num_rows, max_context, dtype=torch.int32, device=device)
        self._free = list(range(num_rows - 1, -1, -1))
        self._rows: dict[str, _Row] = {}
        self._step = 0

    def sync(self, sequences: list[SequencePlan]) -> list[int]:
        """Bring every sequence's row up to ``slots[:seq_len]``; returns the row of each sequence."""
        self._step += 1
        live = {seq.request_id for seq in sequences}
        rows, cols, values = [], [], []
        indices = []
        for seq in sequences:
            row = self._row_for(seq, live)
            start, end = row.num_synced, seq.seq_len
            if end > start:
                rows.extend([row.index] * (end - start))
                cols.extend(range(start, end))
                values.extend(seq.slots[start:end])
            row.num_synced, row.last_step = end, self._step
            indices.append(row.index)
        if values:
            self._write(rows, cols, values)
        return indices

    def _row_for(self, seq: SequencePlan, live: set[str]) -> _Row:
        if seq.seq_len > self.max_context:
            raise ValueError(f"sequence of {seq.seq_len} tokens exceeds the slot table's {self.max_context}")
        row = self._rows.get(seq.request_id)
        if row is not None and row.version == seq.slots_version and row.num_synced <= seq.seq_len:
            return row
        if row is None:
            row = _Row(self._claim(live), 0, seq.slots_version, self._step)
            self._rows[seq.request_id] = row
        row.num_synced, row.version = 0, seq.slots_version
        return row

    def _claim(self, live: set[str]) -> int:
        if not self._free:
            stale = [(row.last_step, rid) for rid, row in self._rows.items() if rid not in live]
            if not stale:
                raise RuntimeError("slot table full: more sequences in one step than rows")
            _, rid = min(stale)
            self._free.append(self._rows.pop(rid).index)
        return self._free.pop()

    def _write(self, rows: list[int], cols: list[int], values: list[int]) -> None:
        packed = to_device([rows, cols, values], self.device)  # [3, N], no wait for queued work
        self.table[packed[0], packed[1]] = packed[2].to(torch.int32)

    def gather(self, row_indices: torch.Tensor, seq_lens: torch.Tensor, kv_indptr: torch.Tensor, total: int):
        """Flat ``kv_slots [total]`` (int32): row ``row_indices[i]``'s first ``seq_lens[i]`` entries, in order.

        All arguments are device tensors (``kv_indptr [B + 1]``); ``total == sum(seq_lens)`` is passed
        from the host so no synchronisation is needed.
        """
        owner = torch.repeat_interleave(torch.arange(seq_lens.numel(), device=self.device), seq_lens, output_size=total)
        position = torch.arange(total, device=self.device) - kv_indptr[owner]
        return self.table[row_indices[owner], position]
