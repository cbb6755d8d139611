"""Progress that suits the output: a tqdm bar on a terminal, plain lines in a log or a pipe.

``progress(iterable, desc=..., unit=...)`` (or ``progress(total=n, ...)`` with ``update``) returns a tqdm bar when
stderr is a terminal; otherwise a :class:`LineProgress` that prints one line per finished item of an iterable
(``desc [i/n] postfix (s)``) or, for a counted total, one line when it closes -- no carriage-return frames.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Optional

from tqdm.auto import tqdm

__all__ = ["progress", "LineProgress"]


class LineProgress:
  """tqdm's small interface (iterate, ``update``, ``set_postfix_str``, ``close``) as plain lines on stderr."""

  def __init__(self, iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "",
               unit: str = "it"):
    self.iterable, self.desc, self.unit = iterable, desc, unit
    self.total = len(iterable) if total is None and hasattr(iterable, "__len__") else total
    self.n, self.postfix, self.start, self.closed = 0, "", time.perf_counter(), False

  def _line(self, text: str) -> None:
    print(f"{self.desc}: {text} ({time.perf_counter() - self.start:.1f}s)", file=sys.stderr, flush=True)

  def __iter__(self):
    for i, item in enumerate(self.iterable):
      yield item
      self.n = i + 1
      self._line(f"[{self.n}/{self.total if self.total is not None else '?'}] {self.postfix}".rstrip())

  def update(self, n: int = 1) -> None:
    self.n += n

  def set_postfix_str(self, s: str) -> None:
    self.postfix = s

  def close(self) -> None:
    if not self.closed and self.iterable is None and self.n:
      self._line(f"{self.n} {self.unit}")
    self.closed = True


def progress(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "", unit: str = "it",
             disable: bool = False):
  """A tqdm bar on a terminal, :class:`LineProgress` otherwise; ``disable``: nothing at all."""
  if not disable and sys.stderr.isatty():
    return tqdm(iterable, total=total, desc=desc, unit=unit)
  if disable:
    return tqdm(iterable, total=total, disable=True)
  return LineProgress(iterable, total=total, desc=desc, unit=unit)
