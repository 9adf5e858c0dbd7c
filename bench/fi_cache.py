"""Restore a carried FlashInfer JIT cache so that ninja reuses it instead of rebuilding (~2 min).

FlashInfer builds its kernels with ninja, which rebuilds an object when an input looks newer than
what its logs recorded. On a fresh machine every input looks new: the wheel was just installed and
the copy of the cache has fresh times. So, after copying (paths must be the ones the cache was
built with, since ninja also rebuilds when a command line changes):

* inputs (the installed packages, FlashInfer's generated sources) are dated 2001;
* each module's outputs are dated at the oldest input time its ``.ninja_log`` recorded, which is
  newer than any system header and no newer than the recorded dependency times.

    python -m bench.fi_cache SRC DST SITE    # e.g. .gpu/fi /tmp/fi /tmp/rs-site
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

_OLD_NS = 978_307_200 * 10**9  # 2001-01-01


def restore(src: Path, dst: Path, site: Path) -> int:
    """Copy ``src`` into ``dst`` and re-date it (see module doc); returns the modules found."""
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    for path in _files(site):
        os.utime(path, ns=(_OLD_NS, _OLD_NS), follow_symlinks=False)
    modules = 0
    for log in dst.rglob(".ninja_log"):
        recorded = [int(line.split("\t")[2]) for line in log.read_text().splitlines() if not line.startswith("#")]
        if not recorded:
            continue
        modules += 1
        when = min(recorded)
        for path in _files(log.parent):
            os.utime(path, ns=(when, when), follow_symlinks=False)
    for generated in dst.rglob("generated"):
        for path in _files(generated):
            os.utime(path, ns=(_OLD_NS, _OLD_NS), follow_symlinks=False)
    return modules


def _files(root: Path):
    return (path for path in root.rglob("*") if path.is_file() and path.name not in (".ninja_log", ".ninja_deps"))


if __name__ == "__main__":
    src, dst, site = (Path(arg) for arg in sys.argv[1:4])
    print(f"FlashInfer JIT cache: {restore(src, dst, site)} modules restored into {dst}")
