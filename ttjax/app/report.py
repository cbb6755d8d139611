"""Reports of the CLI's analyses: fixed-width tables, versioned JSON, CSV and matplotlib figures.

The same rows feed all outputs: a *row* is a JSON-ready dict (nested dicts allowed, e.g. ``scores`` or
``ground_truth``); :func:`flatten` turns it into ``{"ground_truth.accuracy": ...}`` scalars for CSV, dropping
list-valued fields (``D``, ``B``) that only JSON carries.

JSON layout (``schema_version`` 2)::

  {"schema_version": 2, "tool": "ttjax", "version": "...", "command": "bound" | "score" | "rank" | "demo",
   "settings": {...},            # the arguments that shaped the run (sizes, seeds, setting, steps)
   "results": [row, ...],        # one row per (source, target, model)
   "ranking": {score: {...}}}    # rank / demo: ttjax.selection.rank_report per target (rank: one target)

A bound row has ``name``, ``source``, ``target``, ``model``, ``seed``, ``config`` and every field of
:class:`ttjax.bound.BoundResult` (``bound``, ``source_loss``, ``entropy``, ``wasserstein``, ``tau_hat``,
``target_accuracy``, ``target_loss`` ...), plus ``ground_truth`` (``accuracy``, ``loss``, ...: the fine-tuned
head on the target's test split) and optionally ``scores``.
"""

from __future__ import annotations

import csv
import json
import math
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from ttjax import __version__
from ttjax.assets import atomic_file

__all__ = ["SCHEMA_VERSION", "flatten", "format_value", "table", "write_json", "write_csv", "payload",
           "bound_table", "scores_table", "ranking_table", "ranking_summary", "transport_label", "plot_bound_terms", "plot_score_scatter", "BOUND_COLUMNS",
           "RELATEDNESS_COLUMNS", "relatedness_table"]

SCHEMA_VERSION = 2

Column = tuple  # (key in the flattened row, header, format spec)

BOUND_COLUMNS: tuple[Column, ...] = (
    ("bound", "bound", ".4f"),
    ("source_loss", "src loss", ".4f"),
    ("entropy", "H(B|D)", ".4f"),
    ("merge_gain", "-gain", ".4f"),
    ("tau_w", "tau*W", ".4f"),
    ("tau_hat", "tau_hat", ".4f"),
    ("wasserstein", "W", ".3f"),
    ("target_loss", "h_T loss", ".4f"),
    ("target_accuracy", "h_T acc", ".3f"),
    ("ground_truth.loss", "FT loss", ".4f"),
    ("ground_truth.accuracy", "FT acc", ".3f"),
    ("log_kt", "log K_t", ".3f"),
    ("split_target", "target split", ""),
    ("seconds", "time s", ".1f"),
)


#: The label-free analysis' table: the bound's columns with ``relatedness`` first and ``h_T``'s loss / accuracy
#: named as what they are there (against the pseudo-labels: predicted).
RELATEDNESS_COLUMNS: tuple[Column, ...] = (("relatedness", "relatedness", ".4f"),) + tuple(
    (k, {"target_loss": "pred. loss", "target_accuracy": "pred. acc"}.get(k, h), f) for k, h, f in BOUND_COLUMNS
    if k != "bound") + (("num_target_classes", "K_t", "d"), ("k_criterion", "K_t by", ""))


def _jsonable(v: Any) -> Any:
  if isinstance(v, Mapping):
    return {str(k): _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, np.ndarray):
    return _jsonable(v.tolist())
  if isinstance(v, (np.integer,)):
    return int(v)
  if isinstance(v, (np.floating, float)):
    f = float(v)
    return f if math.isfinite(f) else None  # strict JSON has no NaN / inf
  if isinstance(v, (np.bool_,)):
    return bool(v)
  return v


def flatten(row: Mapping, prefix: str = "") -> dict:
  """``{"a": {"b": 1}, "c": [..]}`` -> ``{"a.b": 1}``: scalars only, nested keys joined by ``.``."""
  out = {}
  for k, v in row.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flatten(v, key + "."))
    elif isinstance(v, (list, tuple, np.ndarray)):
      continue
    else:
      out[key] = v
  return out


def format_value(v: Any, spec: str = "") -> str:
  if v is None:
    return "-"
  if isinstance(v, (float, np.floating)):
    return "nan" if not math.isfinite(float(v)) else format(float(v), spec or ".4g")
  return str(v)


def table(rows: Sequence[Mapping], columns: Sequence[Column], *, label: Optional[Column] = None) -> str:
  """A fixed-width text table of ``rows`` (flattened) with ``columns`` = ``(key, header, format)``."""
  flat = [flatten(r) for r in rows]
  cols = ([label] if label else []) + list(columns)
  cells = [[format_value(f.get(k), spec) for k, _, spec in cols] for f in flat]
  widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(cols)]
  def line(items):
    return "  ".join((s.ljust(w) if i == 0 and label else s.rjust(w)) for i, (s, w) in enumerate(zip(items, widths)))
  sep = "  ".join("-" * w for w in widths)
  return "\n".join([line([h for _, h, _ in cols]), sep] + [line(c) for c in cells])


def _with_derived(rows: Sequence[Mapping]) -> list[dict]:
  out = []
  for r in rows:
    r = dict(r)
    if "tau_hat" in r and "wasserstein" in r:
      r["tau_w"] = float(r["tau_hat"]) * float(r["wasserstein"])
    if "num_target_classes" in r:
      r["log_kt"] = math.log(int(r["num_target_classes"]))  # the loss of the uniform guess: a vacuity line
    out.append(r)
  return out


def bound_table(rows: Sequence[Mapping]) -> str:
  """Bound, its terms, the transformed classifier's target loss/accuracy, the fine-tuned ground truth, log K_t."""
  rows = _with_derived(rows)
  return table(rows, [c for c in BOUND_COLUMNS if any(c[0] in flatten(r) for r in rows)], label=("name", "pair", ""))


def relatedness_table(rows: Sequence[Mapping]) -> str:
  """The label-free relatedness, its terms, the predicted loss / accuracy of ``h_T`` (against the pseudo-labels),
  the fine-tuned ground truth when the target had labels (evaluation only), ``K_t`` and how it was chosen."""
  rows = _with_derived(rows)
  return table(rows, [c for c in RELATEDNESS_COLUMNS if any(c[0] in flatten(r) for r in rows)],
               label=("name", "pair", ""))


def scores_table(rows: Sequence[Mapping], names: Sequence[str], *, label_key: str = "name") -> str:
  """One row per task/model: every score and the ground truth."""
  cols = [(f"scores.{n}", n, ".4g") for n in names]
  cols += [("bound", "bound", ".4f")] if any("bound" in r for r in rows) else []
  cols += [("relatedness", "relatedness", ".4f")] if any("relatedness" in r for r in rows) else []
  cols += [("ground_truth.accuracy", "FT acc", ".3f"), ("ground_truth.loss", "FT loss", ".4f")]
  return table(rows, cols, label=(label_key, label_key, ""))


def ranking_table(report: Mapping[str, Mapping]) -> str:
  """``rank_report`` output: one row per score."""
  rows = [dict(score=name, **m) for name, m in report.items()]
  cols = [("kendall_tau", "kendall", "+.3f"), ("weighted_tau", "w.tau", "+.3f"), ("pearson", "pearson", "+.3f"),
          ("spearman", "spearman", "+.3f"), ("top1_regret", "top1 regret", ".3f"), ("top1_model", "top-1 pick", ""),
          ("best_model", "best (FT)", "")]
  return table(rows, cols, label=("score", "score", ""))


def ranking_summary(target: str, rows: Sequence[Mapping], ranking: Mapping[str, Mapping]) -> str:
  """One plain-language line per target: which encoder transfers best (fine-tuned accuracy), whether the bound
  and how many scores pick it."""
  by_acc = sorted(rows, key=lambda r: -r["ground_truth"]["accuracy"])
  best = by_acc[0]["model"]
  text = f"{target}: {best} transfers best (FT acc {by_acc[0]['ground_truth']['accuracy']:.3f}"
  text += "".join(f"; {r['model']} {r['ground_truth']['accuracy']:.3f}" for r in by_acc[1:]) + ")."
  if "bound" in ranking:
    b = ranking["bound"]
    verdict = "right" if b["top1_model"] == best else ("a tie" if " = " in b["top1_model"] else "wrong")
    text += f" The bound picks {b['top1_model']} ({verdict}; weighted tau {b['weighted_tau']:+.2f})."
  scores = [n for n in ranking if n != "bound"]
  if scores:
    right = [n for n in scores if ranking[n]["top1_model"] == best]
    text += f" {len(right)}/{len(scores)} scores pick it" + (f": {', '.join(right)}." if right else ".")
  return text


def payload(command: str, results: Sequence[Mapping], *, settings: Optional[Mapping] = None, **extra) -> dict:
  """The versioned JSON document (see the module docstring)."""
  doc = {"schema_version": SCHEMA_VERSION, "tool": "ttjax", "version": __version__, "command": command,
         "settings": dict(settings or {}), "results": list(results)}
  doc.update(extra)
  return _jsonable(doc)


def write_json(path: str, doc: Mapping) -> None:
  """``doc`` as indented strict JSON (no NaN: :func:`payload` maps non-finite numbers to ``null``), atomically."""
  with atomic_file(path, "w") as f:
    json.dump(doc, f, indent=2, allow_nan=False)


def write_csv(path: str, rows: Iterable[Mapping]) -> None:
  """Flattened rows (union of keys, first-seen order); floats with full precision (``repr``)."""
  flat = [flatten(_jsonable(r)) for r in rows]
  keys: list[str] = []
  for f in flat:
    keys += [k for k in f if k not in keys]
  with atomic_file(path, "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for f in flat:
      w.writerow({k: ("" if f.get(k) is None else repr(f[k]) if isinstance(f.get(k), float) else f.get(k))
                  for k in keys})


# ------------------------------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg backend: no display needed).
# ------------------------------------------------------------------------------------------------------------------


def _plt():
  # matplotlib is optional (ttjax[report]) and slow to import: only when a figure is drawn
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(plt, fig, path: str) -> str:
  """Lay out, write (PNG, 110 dpi) and close ``fig``; return ``path``."""
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def transport_label(rows: Sequence[Mapping]) -> str:
  """Legend of the transport term: ``tau_hat * W`` names a measured constant, the certified logit-space bound's
  constant is the proven Lipschitz constant 1 of the cross-entropy in the range cost."""
  if rows and all(r.get("lipschitz") == "certified" for r in rows):
    return "W (logit-range transport; Lipschitz constant 1, certified)"
  if any(r.get("lipschitz") == "certified" for r in rows):
    return r"$\tau \cdot W$ ($\tau$ = 1 certified, or measured $\hat\tau$)"
  return r"$\hat\tau \cdot W$ ($\hat\tau$ measured)"


def plot_bound_terms(rows: Sequence[Mapping], path: str, *, title: str = "TTA bound by term") -> str:
  """Stacked bars of the bound's terms per pair: the weighted source loss and H(B|D), the transport term from their
  sum less the label-merging gain (hatched: the part of them the bound does not pay), so each bar's top is the
  bound; the fine-tuned test loss (ground truth) and the transformed classifier's target loss as markers."""
  plt = _plt()
  rows = list(rows)
  labels = [str(r.get("name", i)) for i, r in enumerate(rows)]
  src = np.array([r["source_loss"] for r in rows], float)
  ent = np.array([r["entropy"] for r in rows], float)
  gain = np.array([r.get("merge_gain", 0.0) for r in rows], float)
  tw = np.array([r["tau_hat"] * r["wasserstein"] for r in rows], float)
  first = src + ent - gain  # the loss of h_T on the transformed source T'
  x = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(rows) + 5), 4.8))
  ax.bar(x, src, 0.6, label="weighted source loss", color="#4c72b0")
  ax.bar(x, ent, 0.6, bottom=src, label="H(B | D) (label map)", color="#dd8452")
  ax.bar(x, tw, 0.6, bottom=first, label=transport_label(rows), color="#55a868")
  if np.any(gain > 0):  # drawn over the bars: the part of source loss + H that the bound does not pay
    ax.bar(x, gain, 0.6, bottom=first, label="label-merging gain (subtracted)", fill=False, hatch="//",
           edgecolor="#333333", lw=0.0)
  for i, r in enumerate(rows):
    ax.text(i, first[i] + tw[i], f"{r['bound'] if 'bound' in r else r['relatedness']:.2f}", ha="center",
            va="bottom", fontsize=8)
  ft = [r.get("ground_truth", {}).get("loss") if isinstance(r.get("ground_truth"), Mapping) else None for r in rows]
  if any(v is not None for v in ft):
    ax.scatter([i for i, v in enumerate(ft) if v is not None], [v for v in ft if v is not None], marker="D",
               color="black", zorder=3, label="fine-tuned test loss (actual)")
  ax.scatter(x, [r["target_loss"] for r in rows], marker="_", s=300, color="#c44e52", zorder=3,
             label=r"target loss of $h_T$")
  kt = {int(r.get("num_target_classes", 0)) for r in rows}
  for k in sorted(kt):
    if k > 1:
      ax.axhline(math.log(k), color="grey", lw=0.8, ls=":")
      ax.text(len(rows) - 0.5, math.log(k), f"log {k}", fontsize=7, color="grey", va="bottom", ha="right")
  ax.set_xticks(x)
  ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
  ax.set_ylabel("nats (cross-entropy)")
  ax.set_title(title)
  top = max([float(np.max(np.maximum(first + tw, src + ent)))] + [v for v in ft if v is not None])
  ax.set_ylim(0, top * 1.12 + 1e-9)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
  return _save(plt, fig, path)


def plot_score_scatter(model_rows: Sequence[Mapping], report: Mapping[str, Mapping], path: str, *,
                       title: str = "") -> str:
  """One panel per score: the score of each model against its fine-tuned test accuracy, Kendall / weighted tau in
  the panel title. The bound enters as ``-bound`` (higher = better, like the scores)."""
  plt = _plt()
  names = list(report)
  ncol = min(4, max(1, len(names)))
  nrow = max(1, math.ceil(len(names) / ncol))
  fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.0 * nrow), squeeze=False)
  acc = [r["ground_truth"]["accuracy"] for r in model_rows]
  models = [str(r.get("model", i)) for i, r in enumerate(model_rows)]
  for ax, name in zip(axes.flat, names):
    negated = name in ("bound", "relatedness")  # lower = better: plotted negated
    vals = [(-r[name] if negated else r.get("scores", {}).get(name)) for r in model_rows]
    pts = [(v, a, m) for v, a, m in zip(vals, acc, models) if v is not None]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="#4c72b0")
    for v, a, m in pts:
      ax.annotate(m, (v, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
    m = report[name]
    ax.set_title(f"{'-' + name if negated else name}: tau={m['kendall_tau']:+.2f}, "
                 f"w.tau={m['weighted_tau']:+.2f}", fontsize=9)
    ax.set_xlabel("-" + name if negated else "score", fontsize=8)
    ax.set_ylabel("fine-tuned test accuracy", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.ticklabel_format(axis="both", style="plain", useOffset=False)
    ax.locator_params(axis="x", nbins=4)
    ax.margins(0.15)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  return _save(plt, fig, path)
