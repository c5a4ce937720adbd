"""docs/results.md from the studies' ``results.json`` files, so its numbers cannot drift from the runs.

Every study (:mod:`tfhalo.studies.deep_halos`, :mod:`tfhalo.studies.neural_bias`)
writes a ``results.json`` whose top level holds

* ``"summary"``: a list of rows ``{"quantity": str, "value": float, "error":
  float | [low, high] | null, "error_kind": str, "paper": float | null,
  "note": str}``;
* ``"config"`` (the study's frozen config as a dict), ``"seed"``, ``"machine"``
  and optionally ``"date"`` (ISO 8601), ``"study"``, ``"figures"``
  (``{caption: path relative to the run directory}``) and ``"robustness"``
  (rows of ``benchmarks/bias_robustness.py``).

:func:`render_results_doc` turns them into Markdown: one section per study with a
table of ``value ± error (kind)`` or ``value [low, high] (kind)`` beside the
paper's value, the run's config, seed, machine and date, and its PNG figures;
:func:`write_results_doc` writes that text atomically. Nothing is rounded away
silently: a non-finite value is printed as ``nan`` / ``inf`` / ``-inf``, a
missing one as ``n/a``.

The papers the studies reproduce:
Lucie-Smith, Peiris, Pontzen, Nord & Thiyagalingam (2020), "Deep learning
insights into cosmological structure formation", arXiv:2011.10577;
Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche & Hudson (2020), "Neural
physical engines for inferring the halo mass distribution function", MNRAS 494,
50, arXiv:1909.06379.

Example:
    >>> write_results_doc(["runs/demo/deep_halos", "runs/demo/neural_bias"],
    ...                   out="docs/results.md")            # doctest: +SKIP
    PosixPath('docs/results.md')
"""

from __future__ import annotations

import datetime
import json
import math
import numbers
import os
import shutil
from pathlib import Path

from tfhalo.atomic import atomic_path, write_text_atomic

__all__ = ["load_results", "render_results_doc", "write_results_doc", "ROBUSTNESS_COLUMNS"]

RESULTS_FILE = "results.json"

#: Columns of a robustness table, in this order; other scalar keys of the rows follow
#: (``sampler_seed`` is shown as ``seed``; nested values such as a per-run config are left out).
ROBUSTNESS_COLUMNS = (
    "catalogue", "seed", "max_rhat", "min_ess_bulk", "min_ess_tail", "n_divergent", "seconds", "converged",
)
# Rows are tallied per value of this key when it has several (the BLAS-kernel check reruns a catalogue).
_GROUP_KEY = "blas"

# Section titles of the studies tfhalo ships; any other study is titled by its name.
_TITLES = {
    "deep_halos": "Deep-halo CNN (Lucie-Smith et al. 2020, arXiv:2011.10577)",
    "neural_bias": "Neural bias model (Charnock et al. 2020, arXiv:1909.06379)",
    "field_level": "Field-level inference with the neural bias model (Charnock et al. 2020, arXiv:1909.06379)",
}
_DATE_KEYS = ("date", "finished", "timestamp", "created")


# --------------------------------------------------------------------------- loading


def _results_path(run) -> Path:
    if not isinstance(run, (str, os.PathLike)):
        raise ValueError(f"each run must be a path to a results.json file or a run directory. Received: run={run!r}")
    path = Path(run)
    if str(run) == "":
        raise ValueError(f"each run must be a non-empty path. Received: run={run!r}")
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path} (from run={str(run)!r})")
    return path


def _read_json(path: Path, what: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)  # NaN / Infinity literals are accepted, and rendered as such
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text: {err}") from None


def _as_number(value, where: str, allow_none: bool = True):
    """A float (NaN and infinities kept), or None; anything else is an error naming ``where``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{where} must be a number{' or null' if allow_none else ''}. Received: {value!r}")
    return value


def _check_row(row, path: Path, index: int) -> dict:
    where = f"{path}: summary[{index}]"
    if not isinstance(row, dict):
        raise ValueError(f"{where} must be an object with a 'quantity'. Received: {row!r}")
    quantity = row.get("quantity")
    if not isinstance(quantity, str) or not quantity:
        raise ValueError(f"{where}.quantity must be a non-empty string. Received: {quantity!r}")
    _as_number(row.get("value"), f"{where}.value")
    error = row.get("error")
    if isinstance(error, (list, tuple)):
        if len(error) != 2:
            raise ValueError(f"{where}.error must be a number, [low, high] or null. Received: {error!r}")
        for bound in error:
            _as_number(bound, f"{where}.error bound")  # null: a bound that was not finite
    else:
        _as_number(error, f"{where}.error")
    _as_number(row.get("paper"), f"{where}.paper")
    for key in ("error_kind", "note"):
        if row.get(key) is not None and not isinstance(row[key], str):
            raise ValueError(f"{where}.{key} must be a string. Received: {row[key]!r}")
    return row


def _check_robustness(rows, path: Path) -> list:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: robustness must be a list of objects (one per run). Received: {rows!r}")
    return rows


def load_results(run) -> tuple[dict, Path]:
    """Read and check one study's ``results.json``.

    Args:
        run: the ``results.json`` file or the run directory holding it.

    Returns:
        ``(results, path)``: the parsed dict and the file's path.

    Raises:
        FileNotFoundError: no ``results.json`` there (the message names the path).
        ValueError: the file is not JSON, or has no ``summary`` list of rows
            with a ``quantity`` and numeric (or null) ``value`` / ``error`` /
            ``paper``; the message names the file and the row.

    Example:
        >>> results, path = load_results("runs/demo/neural_bias")   # doctest: +SKIP
    """
    path = _results_path(run)
    results = _read_json(path, "results file")
    if not isinstance(results, dict):
        raise ValueError(f"{path} must hold a JSON object with a 'summary' list. Received: {type(results).__name__}")
    summary = results.get("summary")
    if not isinstance(summary, list):
        raise ValueError(f"{path} has no 'summary' list of rows. Received: summary={summary!r}")
    for i, row in enumerate(summary):
        _check_row(row, path, i)
    if "robustness" in results:
        _check_robustness(results["robustness"], path)
    return results, path


def _load_robustness(path) -> dict:
    """A robustness file: a JSON list of rows, or an object with ``robustness`` (or ``runs``, as
    ``benchmarks/bias_robustness.py`` writes it, or ``rows``) and metadata (``machine``, ``date``, ``note``)."""
    if not isinstance(path, (str, os.PathLike)) or str(path) == "":
        raise ValueError(f"robustness must be a path to a JSON file. Received: robustness={path!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"robustness file not found: {path}")
    payload = _read_json(path, "robustness file")
    if isinstance(payload, list):
        payload = {"robustness": payload}
    if not isinstance(payload, dict):
        raise ValueError(f"{path} must hold a list of rows or an object with 'robustness'. Received: {payload!r}")
    rows = next((payload[k] for k in ("robustness", "runs", "rows") if k in payload), None)
    payload = dict(payload, robustness=_check_robustness(rows, path))
    payload["_path"] = path
    return payload


# --------------------------------------------------------------------------- formatting


def _cell(text) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _special(x):
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, numbers.Integral):
        return str(int(x))
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return None


def _fmt(x, digits: int = 6) -> str:
    """A number with up to ``digits`` significant figures; nan / inf / n/a spelled out."""
    special = _special(x)
    return special if special is not None else f"{float(x):.{digits}g}"


def _decimals_for(uncertainty: float) -> int | None:
    """Decimal places that show ``uncertainty`` to two significant figures (None: not usable)."""
    if not math.isfinite(uncertainty) or uncertainty <= 0:
        return None
    return max(0, 1 - math.floor(math.log10(uncertainty)))


def _fixed(x, decimals: int | None) -> str:
    """``x`` to ``decimals`` places (``None``: significant figures); nan / inf / n/a spelled out."""
    if decimals is None or x is None or isinstance(x, bool) or not math.isfinite(x):
        return _fmt(x)
    return f"{float(x):.{decimals}f}"


def format_measurement(value, error=None, error_kind=None) -> str:
    """``"58.2 ± 3.1 (standard error)"``, ``"0.952 [0.948, 0.955] (68% bootstrap)"`` or ``"1.0025"``.

    The value is shown to the decimal place of the error's second significant
    figure; non-finite numbers are written out (``nan``, ``inf``), never hidden.
    """
    kind = f" ({error_kind})" if error_kind else ""
    if error is None:
        return _fmt(value)
    if isinstance(error, (list, tuple)):
        low, high = error
        finite = all(b is not None and math.isfinite(b) for b in (low, high))
        width = (high - low) / 2 if finite else float("nan")
        dec = _decimals_for(width)
        return f"{_fixed(value, dec)} [{_fixed(low, dec)}, {_fixed(high, dec)}]{kind}"
    dec = _decimals_for(abs(error))
    return f"{_fixed(value, dec)} ± {_fixed(error, dec) if dec is not None else _fmt(error)}{kind}"


def _summary_table(rows) -> list[str]:
    lines = ["| quantity | value | paper | note |", "|---|---|---|---|"]
    for row in rows:
        value = format_measurement(row.get("value"), row.get("error"), row.get("error_kind"))
        paper = "—" if row.get("paper") is None else _fmt(row["paper"])
        lines.append(f"| {_cell(row['quantity'])} | {_cell(value)} | {_cell(paper)} | {_cell(row.get('note') or '')} |")
    return lines


def _config_value(value) -> str:
    if isinstance(value, (dict, list, tuple)):
        return "`" + json.dumps(value, default=str).replace("`", "'") + "`"
    if isinstance(value, float):
        return _fmt(value)
    return str(value)


def _config_block(config) -> list[str]:
    if not isinstance(config, dict) or not config:
        return []
    lines = ["<details><summary>config</summary>", "", "| field | value |", "|---|---|"]
    for key, value in config.items():
        lines.append(f"| {_cell(key)} | {_cell(_config_value(value))} |")
    return lines + ["", "</details>", ""]


def _tally(rows) -> str:
    n_ok = sum(1 for r in rows if r.get("converged") is True)
    text = f"{n_ok} of {len(rows)} runs converged"
    divergent = [r.get("n_divergent") for r in rows]
    if divergent and all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in divergent):
        n_clean = sum(1 for d in divergent if d == 0)
        text += f", {n_clean} without divergences (divergent transitions: {sum(divergent)})"
    return text


def _robustness_table(rows) -> list[str]:
    rows = [dict(r, seed=r["sampler_seed"]) if "seed" not in r and "sampler_seed" in r else r for r in rows]
    machines = {str(r["machine"]) for r in rows if "machine" in r}
    shared_machine = len(machines) == 1 and all("machine" in r for r in rows)
    columns = list(ROBUSTNESS_COLUMNS)
    for row in rows:
        for key, value in row.items():
            if key in columns or key == "sampler_seed" or isinstance(value, (dict, list)):
                continue
            if key == "machine" and shared_machine:
                continue
            columns.append(key)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c)
            cells.append(_cell(_fmt(v) if v is None or isinstance(v, numbers.Real) else v))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if shared_machine:
        lines += [f"Machine: {_cell(machines.pop())}.", ""]
    groups = {}
    for row in rows:
        groups.setdefault(str(row.get(_GROUP_KEY)), []).append(row)
    if len(groups) > 1:
        lines += [f"* {_GROUP_KEY} = {_cell(name)}: {_tally(group)}." for name, group in groups.items()]
    else:
        lines.append(_tally(rows) + ".")
    return lines


#: The rows' config fields that define a robustness table's sampler, said in its title.
_SAMPLER_TITLE_FIELDS = ("kernel", "n_chains", "chain_groups", "pool_warmup", "n_pilot", "pilot_target_accept", "n_warmup",
                         "n_samples", "target_accept", "step_scale", "max_tree_depth", "leapfrog_steps")


def _robustness_title(table: dict) -> str:
    """The benchmark's sampler settings: its ``overrides`` and the rows' config, else the folder.

    The length setting the kernel ignores (``leapfrog_steps`` for NUTS, ``max_tree_depth``
    for HMC) is left out, so two tables that differ only in the preset's tree depth
    do not share a title.
    """
    overrides = dict(table["overrides"]) if isinstance(table.get("overrides"), dict) else {}
    first = table["robustness"][0] if table["robustness"] else {}
    config = first.get("config") if isinstance(first.get("config"), dict) else {}
    settings = {k: config[k] for k in _SAMPLER_TITLE_FIELDS if config.get(k) is not None}
    settings.update(overrides)
    ignored = {"nuts": "leapfrog_steps", "hmc": "max_tree_depth", "chees": "max_tree_depth"}.get(settings.get("kernel"))
    settings.pop(ignored, None)
    if settings.get("chain_groups", 1) == 1:  # one batch, the default: no groups to name
        settings.pop("chain_groups", None)
        settings.pop("pool_warmup", None)
    elif "pool_warmup" not in settings:  # groups sampled before pooled warm-ups existed each warmed up alone
        settings["pool_warmup"] = config.get("pool_warmup", False)
    if not settings:
        return table["_path"].parent.name
    return ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def _run_date(results: dict, path: Path) -> str:
    for key in _DATE_KEYS:
        if isinstance(results.get(key), str) and results[key]:
            return results[key]
    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime, tz=datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M UTC") + f" (time of {path.name})"


def _figures(results: dict, run_dir: Path) -> list[tuple[str, Path]]:
    """``[(caption, path)]``: the ``figures`` the study lists, else every PNG in the run directory and figures/."""
    listed = results.get("figures")
    found = []
    if isinstance(listed, dict):
        found = [(str(caption), run_dir / rel) for caption, rel in listed.items()]
    elif isinstance(listed, list):
        found = [(Path(rel).stem, run_dir / rel) for rel in listed if isinstance(rel, str)]
    else:
        for folder in (run_dir, run_dir / "figures"):
            found += [(p.stem, p) for p in sorted(folder.glob("*.png"))]
    return [(caption, p) for caption, p in found if p.is_file()]


def _study_name(results: dict, path: Path) -> str:
    name = results.get("study")
    return name if isinstance(name, str) and name else path.parent.name


def _relative(target: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()


# --------------------------------------------------------------------------- the document


def render_results_doc(runs, robustness=None, out_dir=".", figure_paths=None, title="Results") -> str:
    """The Markdown text of docs/results.md.

    Args:
        runs: sequence of ``results.json`` files or run directories, one per study.
        robustness: optional path (or list of paths, one table each, titled by their
            ``overrides``) of JSON files from ``benchmarks/bias_robustness.py`` (a list of
            rows, or an object with ``robustness`` rows plus ``machine`` / ``date`` / ``note``).
        out_dir: directory the document will live in; figure links are relative to it.
        figure_paths: optional ``{source PNG: path it will have}`` (e.g. copies
            next to the document); figures not in it are linked where they are.
        title: the document's top heading.

    Returns:
        The document as a string (nothing is written).

    Raises:
        ValueError, FileNotFoundError: as :func:`load_results`, before any text is made.
    """
    return _render(_load_all(runs), _load_robustness_all(robustness), Path(out_dir), figure_paths or {}, title)


def _load_robustness_all(robustness) -> list:
    """``[]`` for None, else one loaded table per path (a path, or a list of paths)."""
    if robustness is None:
        return []
    paths = [robustness] if isinstance(robustness, (str, os.PathLike)) else robustness
    try:
        paths = list(paths)
    except TypeError:
        raise ValueError(f"robustness must be a path or a list of paths to JSON files. "
                         f"Received: robustness={robustness!r}") from None
    return [_load_robustness(p) for p in paths]


def _load_all(runs) -> list:
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    try:
        runs = list(runs)
    except TypeError:
        raise ValueError(
            f"runs must be a list of results.json files or run directories. Received: runs={runs!r}") from None
    if not runs:
        raise ValueError(f"runs must name at least one results.json file or run directory. Received: runs={runs!r}")
    return [load_results(run) for run in runs]


def _render(loaded, robustness, out_dir: Path, figure_paths: dict, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        "Generated by `python experiments/write_results_doc.py` "
        "(`tfhalo.studies.results_doc.write_results_doc`) from the studies' `results.json` files; "
        "do not edit by hand. Errors are given with their kind: a standard error (`±`), "
        "a bootstrap interval (`[low, high]`) or a Monte Carlo standard error (MCSE); "
        "`nan` / `inf` are printed as the run produced them.",
        "",
    ]
    for results, path in loaded:
        name = _study_name(results, path)
        seed = results.get("seed")
        lines += [f"## {_TITLES.get(name, name)}", ""]
        meta = [
            ("run", f"`{path.parent.as_posix()}`"),
            ("date", _run_date(results, path)),
            ("seed", _fmt(seed) if seed is None or isinstance(seed, numbers.Real) else str(seed)),
            ("machine", str(results.get("machine") or "n/a")),
        ]
        lines += [f"* {key}: {_cell(value)}" for key, value in meta] + [""]
        lines += _summary_table(results["summary"]) + [""]
        lines += _config_block(results.get("config"))
        if "robustness" in results:
            lines += ["### Robustness", ""] + _robustness_table(results["robustness"]) + [""]
        for caption, png in _figures(results, path.parent):
            shown = figure_paths.get(png, png)
            lines += [f"![{_cell(caption)}]({_relative(shown, out_dir)})", ""]
            if caption != png.stem:
                lines += [f"*{_cell(caption)}*", ""]
    if robustness:
        lines += ["## Convergence across catalogues and seeds (`benchmarks/bias_robustness.py`, "
                  "`benchmarks/field_calibration.py`)", ""]
        for table in robustness:
            rpath = table["_path"]
            if len(robustness) > 1:
                lines += [f"### {_cell(_robustness_title(table))}", ""]
            meta = [("file", f"`{rpath.as_posix()}`"), ("date", _run_date(table, rpath)),
                    ("machine", str(table.get("machine") or "n/a"))]
            lines += [f"* {key}: {_cell(value)}" for key, value in meta]
            planned = table.get("planned")
            if isinstance(planned, int) and not isinstance(planned, bool):
                done = len(table["robustness"])
                lines.append(f"* runs finished: {done} of the {planned} planned"
                             + (" (partial table: the benchmark was stopped before the end)" if done < planned else ""))
            if table.get("note"):
                lines.append(f"* note: {_cell(table['note'])}")
            lines += [""] + _robustness_table(table["robustness"]) + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_results_doc(runs, out="docs/results.md", robustness=None, copy_figures=True, title="Results") -> Path:
    """Write docs/results.md from the studies' ``results.json`` files, atomically.

    Every input is read and checked before anything is written, so a bad input
    leaves the old document (and no partial file) in place.

    Args:
        runs: sequence of ``results.json`` files or run directories (e.g.
            ``["runs/demo/deep_halos", "runs/demo/neural_bias"]``).
        out: the Markdown file to write; never one of the inputs.
        robustness: optional JSON file of ``benchmarks/bias_robustness.py``, or a list of them.
        copy_figures: copy each study's PNGs to ``<out dir>/figures/<study>/``
            so the document does not point into ``runs/`` (which is not
            committed); ``False`` links them where they are.
        title: the document's top heading.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: a run has no ``results.json`` (the message names the path).
        ValueError: a malformed input (named), or ``out`` is an input file or a directory.

    Example:
        >>> write_results_doc(["runs/demo/deep_halos", "runs/demo/neural_bias"],
        ...                   robustness="runs/robustness.json")   # doctest: +SKIP
        PosixPath('docs/results.md')
    """
    if not isinstance(out, (str, os.PathLike)) or str(out) == "":
        raise ValueError(f"out must be a non-empty file path. Received: out={out!r}")
    if not isinstance(copy_figures, bool):
        raise ValueError(f"copy_figures must be True or False. Received: copy_figures={copy_figures!r}")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"out must be a file path, not a directory. Received: out={str(out)!r}")
    loaded = _load_all(runs)
    rob = _load_robustness_all(robustness)
    inputs = [path for _, path in loaded] + [table["_path"] for table in rob]
    if out.exists() and any(out.resolve() == p.resolve() for p in inputs):
        raise ValueError(f"out must not be one of the input files. Received: out={str(out)!r}")

    figure_paths = {}
    if copy_figures:
        for results, path in loaded:
            target_dir = out.parent / "figures" / _study_name(results, path)
            taken = set()
            for _, png in _figures(results, path.parent):
                name = png.name
                if name in taken:  # the same name in the run directory and in figures/
                    name = "_".join(png.relative_to(path.parent).parts) if png.is_relative_to(path.parent) \
                        else f"{len(taken)}_{name}"
                taken.add(name)
                figure_paths[png] = target_dir / name
    text = _render(loaded, rob, out.parent, figure_paths, title)
    for source, target in figure_paths.items():
        if source.resolve() == target.resolve():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target, suffix=".tmp.png") as tmp:
            shutil.copyfile(source, tmp)
    return write_text_atomic(out, text)
