"""``bench.kernel_resources``: programs an SM holds, from registers, shared memory and warps (an
H100 / H200 SM: four sub-partitions of 16K registers, 228 KiB of shared memory, 2,048 threads,
32 programs)."""

from __future__ import annotations

import pytest

from bench.kernel_resources import occupancy


@pytest.mark.parametrize(
    "registers, shared_kib, warps, programs",
    [
        (125, 38, 4, 4),  # the chunked decode in two stages: 128 registers allocated, four programs
        (162, 38, 4, 3),  # in three stages
        (96, 38, 4, 5),  # registers would allow five; 5 x 39 KiB of shared memory fits too
        (96, 46, 4, 4),  # 5 x 47 KiB (a program reserves 1 KiB more) does not fit in 228
        (29, 0, 4, 16),  # threads: 2,048 / 128
        (224, 96, 8, 1),
        (1, 0, 1, 32),  # at most 32 programs an SM
        (200, 0, 1, 8),  # a warp's 6,400 registers fit twice in a 16K sub-partition, four of them
    ],
)
def test_programs_an_sm_holds(registers, shared_kib, warps, programs):
    assert occupancy(registers, shared_kib * 1024, warps) == programs
