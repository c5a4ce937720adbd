"""``report.md`` and ``results.json`` of the deep-halo study: every number beside the paper's.

The paper is Lucie-Smith, Peiris, Pontzen, Nord & Thiyagalingam (2020), "Deep
learning insights into cosmological structure formation", arXiv:2011.10577.
Numbers carry their bootstrap 68% intervals where the evaluation has them
(``evaluation["intervals"]``, see :func:`tfhalo.studies.deep_halos.evaluation_intervals`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tfhalo.atomic import write_text_atomic
from tfhalo.evaluation.analysis import PAPER_VALUES


def jsonable(obj):
    """``obj`` with NumPy scalars/arrays and paths turned into JSON types; non-finite floats become None.

    Strict JSON has no NaN or infinity, so a value that could not be computed is written as ``null``.

    Example:
        >>> jsonable({"r": np.float32(0.5), "n": np.int64(3), "bad": float("nan"), "ok": np.bool_(True)})
        {'r': 0.5, 'n': 3, 'bad': None, 'ok': True}
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_results_json(path, results: dict) -> Path:
    """Write ``results`` (NaN -> null) atomically as indented JSON."""
    return write_text_atomic(path, json.dumps(jsonable(results), indent=2))


def _interval(results_or_ev: dict, *path):
    """The ``[low, high]`` stored under ``evaluation["intervals"]`` at ``path``, or ``None``."""
    node = results_or_ev.get("intervals")
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node if isinstance(node, (list, tuple)) and len(node) == 2 else None


def headline_numbers(results: dict) -> dict:
    """``{key: (this run, paper, definition, [low, high] or None)}`` for the paper's headline numbers."""
    ev = results["evaluation"]
    out = {}
    for key, (paper, definition) in PAPER_VALUES.items():
        kind, name = key.split("/", 1)
        if kind == "pearson_r":
            model = ev["models"].get(name)
            value = None if model is None else model["all"]["pearson_r"]
            interval = _interval(ev, "models", name, "all")
        else:
            entry = ev["kl"].get(name)
            value = None if entry is None else entry["all"]
            interval = _interval(ev, "kl", name, "all")
        out[key] = (value, paper, definition, interval)
    return out


_MODEL_LABELS = {"raw": "raw-density CNN", "averaged": "averaged-density CNN", "z0": "z=0-density CNN",
                 "multipole": "l=0 multipole CNN", "gbt": "GBT baseline", "random": "random model"}


def summary_rows(evaluation: dict) -> list:
    """The ``results.json`` ``"summary"`` rows: Pearson r of every model and every KL divergence (all particles).

    Each row carries its 68% bootstrap interval (from ``evaluation["intervals"]``,
    ``None`` without one) and the paper's value where the paper gives one.

    Returns:
        ``[{"quantity", "value", "error", "error_kind", "paper", "note"}, ...]``.

    Example:
        >>> rows = summary_rows(results["evaluation"])           # doctest: +SKIP
        >>> rows[0]["quantity"], rows[0]["error_kind"]            # doctest: +SKIP
        ('Pearson r, z=0-density CNN', '68% bootstrap')
    """
    from tfhalo.studies.common import summary_row

    n_boot = (evaluation.get("intervals") or {}).get("n_boot")
    kind = "68% bootstrap"
    rows = []
    order = sorted(evaluation["models"], key=lambda m: (m != "z0", list(_MODEL_LABELS).index(m)
                                                         if m in _MODEL_LABELS else len(_MODEL_LABELS)))
    for name in order:
        paper = PAPER_VALUES.get(f"pearson_r/{name}", (None, ""))
        interval = _interval(evaluation, "models", name, "all")
        rows.append(summary_row(
            f"Pearson r, {_MODEL_LABELS.get(name, name)}", evaluation["models"][name]["all"]["pearson_r"],
            interval, kind if interval is not None else None, paper[0],
            paper[1] or "Pearson r of predicted vs true log10 M over the test particles"
            + (f"; {n_boot} bootstrap replicates" if interval is not None else "")))
    for pair, entry in evaluation["kl"].items():
        paper = PAPER_VALUES.get(f"kl/{pair}", (None, ""))
        interval = _interval(evaluation, "kl", pair, "all")
        p, q = pair.split("||")
        rows.append(summary_row(
            f"D_KL({p} || {q})", entry["all"], interval, kind if interval is not None else None, paper[0],
            (paper[1] or f"D_KL(n_{p} || n_{q}) of residual distributions") + " (nats)"))
    return rows


def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _fmt_ci(x, interval, digits=3):
    """``value [low, high]``, or the value alone without an interval."""
    if interval is None or x is None or any(v is None or not np.isfinite(v) for v in interval):
        return _fmt(x, digits)
    return f"{_fmt(x, digits)} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def write_report(out_dir, results: dict, figures: dict, notes=()) -> Path:
    """Write ``report.md`` (and ``results.json``) into ``out_dir``.

    Args:
        out_dir: the study directory.
        results: the study's results: ``results["evaluation"]`` from
            :func:`~tfhalo.evaluation.analysis.evaluate_predictions` (optionally with
            ``"intervals"``), plus ``"config"``, ``"data"`` and ``"training"`` entries.
        figures: ``{caption: path}`` of PNGs to embed (paths inside ``out_dir``).
        notes: extra lines (caveats) for the report.

    Returns:
        Path of ``report.md``.
    """
    out_dir = Path(out_dir)
    headline = headline_numbers(results)
    results = dict(results)
    results["paper_comparison"] = {k: {"this_run": v, "paper": p, "definition": d, "interval_68": i}
                                   for k, (v, p, d, i) in headline.items()}
    write_results_json(out_dir / "results.json", results)
    ev = results["evaluation"]
    cfg, data = results.get("config", {}), results.get("data", {})
    split = data.get("split", {})
    lines = ["# Deep-halo study report", ""]
    lines += [f"Preset `{cfg.get('preset_name', cfg.get('preset', '?'))}`; suite `{data.get('suite', '?')}`; "
              f"test set: {data.get('n_test', '?')} particles from simulation(s) {split.get('test', '?')} "
              f"(validation: {split.get('validation', '?')}, training: {split.get('train', '?')}).", ""]
    if results.get("machine"):
        lines += [f"Machine: {results['machine']}.", ""]
    ci = "intervals" in ev
    if ci:
        lines += [f"Brackets: 68% bootstrap intervals over the test particles "
                  f"({ev['intervals'].get('n_boot', '?')} replicates).", ""]
    lines += ["## Headline numbers beside the paper (Lucie-Smith et al. 2020, arXiv:2011.10577)", "",
              "| quantity | this run | paper | definition |", "|---|---|---|---|"]
    for key, (value, paper, definition, interval) in headline.items():
        lines.append(f"| `{key}` | {_fmt_ci(value, interval)} | {paper:.2f} | {definition} |")
    lines += ["", "## Every model on the test set", "",
              "| model | n | Pearson r | mean Delta | std Delta | 68% half-width |", "|---|---|---|---|---|---|"]
    for name, m in ev["models"].items():
        a = m["all"]
        lines.append(f"| {name} | {a['n']} | {_fmt_ci(a['pearson_r'], _interval(ev, 'models', name, 'all'))} | "
                     f"{_fmt(a['residual_mean'])} | {_fmt(a['residual_std'])} | {_fmt(a['residual_68_half_width'])} |")
    lines += ["", "## KL divergences between residual distributions", "",
              "| pair | all | inner | mid | outskirts |", "|---|---|---|---|---|"]
    for pair, k in ev["kl"].items():
        r = k["by_region"]
        cells = [_fmt_ci(k["all"], _interval(ev, "kl", pair, "all"))]
        cells += [_fmt_ci(r.get(reg), _interval(ev, "kl", pair, "by_region", reg))
                  for reg in ("inner", "mid", "outskirts")]
        lines.append(f"| {pair} | " + " | ".join(cells) + " |")
    for pair, k in ev["kl"].items():
        lines += ["", f"{pair} by mass bin and region:", "", "| mass bin / region | KL |", "|---|---|"]
        lines += [f"| {sub} | {_fmt_ci(v, _interval(ev, 'kl', pair, 'by_mass_bin_and_region', sub))} |"
                  for sub, v in k["by_mass_bin_and_region"].items()]
    lines += ["", "## Figures", ""]
    for caption, path in figures.items():
        rel = os.path.relpath(path, out_dir)
        lines += [f"### {caption}", "", f"![{caption}]({rel})", ""]
    definitions = dict(ev["definitions"])
    if ci:
        definitions["intervals"] = (f"central {ev['intervals'].get('level', 0.68):.0%} of "
                                    f"{ev['intervals'].get('n_boot', '?')} bootstrap replicates: "
                                    f"{ev['intervals'].get('method', 'percentile bootstrap')}")
    lines += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in definitions.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return write_text_atomic(out_dir / "report.md", "\n".join(lines) + "\n")
