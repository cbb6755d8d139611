"""Resumable long commands: every finished row is appended to a journal, so an interrupted ``ttjax rank`` or
``ttjax demo`` run again with the same arguments reuses what it already finished.

A journal is a JSON-lines file in the cache (``runs/<command>-<hash>-<part>of<parts>.jsonl``: the hash of the
command, the working folder and the arguments that change results; one journal per process of a multi-process
run). Its first line records those arguments; every other line is one finished row,
``{"key": ..., "row": ...}``, written and flushed to disk as soon as the row is done. A line cut short by an
interrupt is ignored on reading (that row is simply computed again). The journal is removed when the command
completes, so a later run with the same arguments starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from ttjax.assets import get_cache_dir

__all__ = ["Journal", "RESULT_NEUTRAL"]

#: Arguments that do not change a row (where results go, how much is printed, how processes join).
RESULT_NEUTRAL = frozenset({"out", "csv", "plot", "quiet", "func", "command", "coordinator", "num_processes",
                            "process_id", "process_timeout", "no_resume"})


def _plain(v):
  """numpy scalars / arrays as Python numbers / lists for ``json.dumps``."""
  return v.tolist() if isinstance(v, (np.ndarray, np.generic)) else str(v)


class Journal:
  """The finished rows of one command with one set of arguments (see the module docstring).

  ``enabled=False`` makes every method a no-op (``--no-resume``)."""

  def __init__(self, command: str, args, *, part: int = 0, parts: int = 1, enabled: bool = True):
    settings = {k: v for k, v in sorted(vars(args).items()) if k not in RESULT_NEUTRAL}
    # the working folder too: relative paths in the arguments name other files elsewhere
    self.header = json.loads(json.dumps({"command": command, "cwd": os.getcwd(), "settings": settings},
                                        default=_plain))
    digest = hashlib.sha256(json.dumps(self.header, sort_keys=True).encode()).hexdigest()[:16]
    self.enabled = enabled
    self.path = get_cache_dir("runs") / f"{command}-{digest}-{part}of{parts}.jsonl"
    self.rows: dict[str, dict] = {}
    if enabled and self.path.exists():
      self._read()
    if self.rows:
      print(f"ttjax: resuming: {len(self.rows)} finished row(s) reused from {self.path} (--no-resume to recompute)",
            file=sys.stderr)

  def _read(self) -> None:
    lines = self.path.read_text(errors="replace").splitlines()
    try:
      if not lines or json.loads(lines[0]) != self.header:
        return
    except ValueError:
      return
    for line in lines[1:]:
      try:
        entry = json.loads(line)
        self.rows[str(entry["key"])] = entry["row"]
      except (ValueError, KeyError, TypeError):
        continue  # a line cut short by an interrupt

  def get(self, key: str) -> Optional[dict]:
    """The finished row of ``key``, or ``None``."""
    return self.rows.get(str(key)) if self.enabled else None

  def put(self, key: str, row: dict) -> dict:
    """Record ``row`` as finished (appended and synced to disk at once); returns it as read back from JSON, so a
    fresh row and a resumed one look the same."""
    row = json.loads(json.dumps(row, default=_plain))
    if self.enabled:
      new = not self.path.exists() or not self.rows
      with open(self.path, "w" if new else "a") as f:
        if new:
          f.write(json.dumps(self.header) + "\n")
        f.write(json.dumps({"key": str(key), "row": row}) + "\n")
        f.flush()
        os.fsync(f.fileno())
      self.rows[str(key)] = row
    return row

  def done(self) -> None:
    """The command completed: remove the journal."""
    if self.enabled:
      Path(self.path).unlink(missing_ok=True)
