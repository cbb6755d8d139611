"""The ``ttjax`` command. ``ttjax COMMAND --help`` for each.

  ttjax bound     the TTA bound source -> target (+ the fine-tuned ground truth)
  ttjax score     transferability scores of a target task (+ ground truth)
  ttjax rank      rank a zoo of encoders by every score and by the bound, against the ground truth
  ttjax features  extract and cache features of a dataset split
  ttjax demo      the main job on its offline default: real encoders on real corpora (``--synthetic``: toy tasks)

TASK: an ``.npz`` of ``features``/``labels`` (any encoder), a built-in dataset (``20ng``, ``r8``, ``tweets``,
``20ng:comp-vs-rec`` ...) or a tfds dataset in ``--data-dir``. MODEL: a zoo encoder (``minilm-l6``, ``minilm-l3``,
``wordllama-l2-256``) or a local checkpoint folder. Errors exit with one line ``ttjax: error: ...``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import jax

from ttjax.app.commands import load_npz_task
from ttjax.app.parser import build_parser
from ttjax.app.report import SCHEMA_VERSION
from ttjax.app.resolve import TaskError
from ttjax.assets import AssetUnavailableError, get_cache_dir

__all__ = ["main", "build_parser", "check_output_paths", "load_npz_task", "SCHEMA_VERSION"]


def _enable_compilation_cache() -> None:
  """Persistent XLA compilation cache for command-line runs (repeated runs skip most compile time)."""
  if os.environ.get("TTJAX_NO_COMPILATION_CACHE"):
    return
  try:
    jax.config.update("jax_compilation_cache_dir", str(get_cache_dir("jax_compilation_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  except Exception:  # pylint: disable=broad-except  (an optimisation only)
    pass


def check_output_paths(args) -> None:
  """Before any work: ``--out`` / ``--csv`` name files (not folders) and ``--plot`` a folder, each in a place that
  can be written (probed with a temporary file), so a long run never ends in an unwritable path."""
  for flag, is_dir in (("out", False), ("csv", False), ("plot", True)):
    value = getattr(args, flag, None)
    if not value:
      continue
    path = Path(value)
    if not is_dir and (str(value).endswith(("/", os.sep)) or path.is_dir()):
      raise SystemExit(f"ttjax: error: --{flag} {value}: is a folder; give a file name, e.g. "
                       f"{path / ('result.json' if flag == 'out' else 'result.csv')}")
    if is_dir and path.exists() and not path.is_dir():
      raise SystemExit(f"ttjax: error: --{flag} {value}: is a file; give a folder for the figures")
    folder = path if is_dir else path.parent
    existing = folder.resolve()
    while not existing.exists():
      existing = existing.parent
    if not existing.is_dir():
      raise SystemExit(f"ttjax: error: --{flag} {value}: {existing} is a file, not a folder")
    try:
      fd, probe = tempfile.mkstemp(prefix=".ttjax-write-test.", dir=existing)
      os.close(fd)
      os.unlink(probe)
    except OSError as e:
      raise SystemExit(f"ttjax: error: --{flag} {value}: cannot write in {existing} ({e.strerror})") from None


def main(argv=None) -> int:
  """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit status; errors exit with one line
  ``ttjax: error: ...`` (``TTJAX_DEBUG=1``: the traceback instead)."""
  # ott-jax 0.6 imports jaxopt, which warns on import that it is unmaintained: noise for a command-line user
  warnings.filterwarnings("ignore", message="JAXopt is no longer maintained", category=DeprecationWarning)
  args = build_parser().parse_args(argv)
  if argv is None:
    _enable_compilation_cache()
  check_output_paths(args)
  try:
    return args.func(args)
  except SystemExit:
    raise
  except KeyboardInterrupt:
    resumable = args.func.__name__ in ("cmd_rank", "cmd_demo")
    raise SystemExit("ttjax: interrupted" + (" (the finished rows are kept: the same command resumes from them)"
                                             if resumable else ""))
  except Exception as e:  # pylint: disable=broad-except
    if os.environ.get("TTJAX_DEBUG"):
      raise
    known = (TaskError, ValueError, KeyError, FileNotFoundError, FloatingPointError, AssetUnavailableError)
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    msg = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
    if not isinstance(e, known):
      msg = f"{type(e).__name__}: {msg} (TTJAX_DEBUG=1 shows the traceback)"
    raise SystemExit(f"ttjax: error: {msg}")


if __name__ == "__main__":
  sys.exit(main())
