"""Progress of long loops: a bar on a terminal, plain dated lines in a log file.

Workflow jobs write stderr to a log file, where a carriage-return bar becomes one unreadable line;
there the same loop prints a line such as ``decode eval.h5: 1200/5159 (23%) in 12 s, ~40 s left``
at most every ``interval`` seconds, and a final line with the total time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def progress(
    items: Iterable[T],
    total: int,
    desc: str,
    *,
    unit: str = "it",
    interval: float = 15.0,
    file: TextIO | None = None,
) -> Iterator[T]:
    """Yield ``items`` while reporting progress on ``file`` (default stderr).

    A terminal gets a tqdm bar; anything else (a job's log file) gets a line at most every
    ``interval`` seconds and one at the end.
    """
    out = sys.stderr if file is None else file
    if out.isatty():
        yield from tqdm(items, total=total, desc=desc, unit=unit, file=out)
        return
    start = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= interval and done < total:
            last = now
            left = (now - start) / done * (total - done)
            print(
                f"{desc}: {done}/{total} {unit} ({100 * done / max(total, 1):.0f}%) in {_seconds(now - start)}, "
                f"~{_seconds(left)} left",
                file=out,
                flush=True,
            )
    print(f"{desc}: {done}/{total} {unit} in {_seconds(time.perf_counter() - start)}", file=out, flush=True)
