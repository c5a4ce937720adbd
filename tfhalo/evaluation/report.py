"""``report.md`` and ``results.json``: every number beside the paper's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tfhalo.atomic import write_text_atomic
from tfhalo.evaluation.analysis import PAPER_VALUES


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_results_json(path, results: dict) -> Path:
    """Write ``results`` (NaN -> null) atomically as indented JSON."""
    return write_text_atomic(path, json.dumps(_jsonable(results), indent=2))


def headline_numbers(results: dict) -> dict:
    """``{key: (this run, paper, definition)}`` for the paper's headline numbers."""
    out = {}
    for key, (paper, definition) in PAPER_VALUES.items():
        kind, name = key.split("/", 1)
        value = None
        if kind == "pearson_r":
            model = results["evaluation"]["models"].get(name)
            value = None if model is None else model["all"]["pearson_r"]
        else:
            entry = results["evaluation"]["kl"].get(name)
            value = None if entry is None else entry["all"]
        out[key] = (value, paper, definition)
    return out


def _fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def write_report(out_dir, results: dict, figures: dict, notes=()) -> Path:
    """Write ``report.md`` (and ``results.json``) into ``out_dir``.

    Args:
        out_dir: the study directory.
        results: the study's results (``results["evaluation"]`` from
            :func:`~tfhalo.evaluation.analysis.evaluate_predictions`, plus
            ``"config"`` and ``"training"`` entries).
        figures: ``{caption: path}`` of PNGs to embed (paths inside ``out_dir``).
        notes: extra lines (caveats) for the report.

    Returns:
        Path of ``report.md``.
    """
    out_dir = Path(out_dir)
    headline = headline_numbers(results)
    results = dict(results)
    results["paper_comparison"] = {k: {"this_run": v, "paper": p, "definition": d}
                                   for k, (v, p, d) in headline.items()}
    write_results_json(out_dir / "results.json", results)
    ev = results["evaluation"]
    cfg = results.get("config", {})
    lines = ["# Deep-halo study report", ""]
    lines += [f"Preset `{cfg.get('preset', '?')}`; suite `{cfg.get('suite', '?')}`; "
              f"test set: {cfg.get('n_test', '?')} particles from simulation(s) "
              f"{cfg.get('split', {}).get('test', '?')} (validation: "
              f"{cfg.get('split', {}).get('validation', '?')}, training: "
              f"{cfg.get('split', {}).get('train', '?')}).", ""]
    lines += ["## Headline numbers beside the paper (Lucie-Smith et al. 2020)", "",
              "| quantity | this run | paper | definition |", "|---|---|---|---|"]
    for key, (value, paper, definition) in headline.items():
        lines.append(f"| `{key}` | {_fmt(value)} | {paper:.2f} | {definition} |")
    lines += ["", "## Every model on the test set", "",
              "| model | n | Pearson r | mean Delta | std Delta | 68% half-width |", "|---|---|---|---|---|---|"]
    for name, m in ev["models"].items():
        a = m["all"]
        lines.append(f"| {name} | {a['n']} | {_fmt(a['pearson_r'])} | {_fmt(a['residual_mean'])} | "
                     f"{_fmt(a['residual_std'])} | {_fmt(a['residual_68_half_width'])} |")
    lines += ["", "## KL divergences between residual distributions", "",
              "| pair | all | inner | mid | outskirts |", "|---|---|---|---|---|"]
    for pair, k in ev["kl"].items():
        r = k["by_region"]
        lines.append(f"| {pair} | {_fmt(k['all'])} | {_fmt(r.get('inner'))} | {_fmt(r.get('mid'))} | "
                     f"{_fmt(r.get('outskirts'))} |")
    for pair, k in ev["kl"].items():
        lines += ["", f"{pair} by mass bin and region:", "", "| mass bin / region | KL |", "|---|---|"]
        lines += [f"| {sub} | {_fmt(v)} |" for sub, v in k["by_mass_bin_and_region"].items()]
    lines += ["", "## Figures", ""]
    for caption, path in figures.items():
        rel = os.path.relpath(path, out_dir)
        lines += [f"### {caption}", "", f"![{caption}]({rel})", ""]
    lines += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in ev["definitions"].items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return write_text_atomic(out_dir / "report.md", "\n".join(lines) + "\n")
