"""What every study shares: cache fingerprints, the suite rule, the command-line shell.

* :func:`fingerprint`: SHA-256 of arrays and JSON-able objects.
* :class:`Cache`: resumable steps stored as ``.npz`` / ``.json`` files that
  carry the settings (the *key*) they were made with; a file made with other
  settings raises :class:`StaleCacheError` naming it and the differing keys.
* :func:`ensure_suite`: the one "use, generate or extend a simulation suite" rule.
* :func:`run_cli`: argparse shell of a study script (exit 2 on bad arguments,
  before anything is written; exit 130 and one line on Ctrl-C).
* :func:`map_in_processes`: independent steps (a study's settings) at once, in fresh processes
  that share the machine's cores.
* :func:`machine_info` / :func:`machine_details`: where a result was computed, for ``results.json``.
* :func:`summary_row`: one row of a ``results.json`` ``"summary"``.

Nothing here imports TensorFlow.

Example:
    >>> import tempfile
    >>> cache = Cache(tempfile.mkdtemp(), {"n_train": 40, "seed": 0})
    >>> cache.load("sets.npz") is None
    True
    >>> _ = cache.save("sets.npz", x=np.arange(3))
    >>> cache.load("sets.npz")["x"].tolist()
    [0, 1, 2]
    >>> len(fingerprint(np.zeros(3), {"a": 1}))
    64
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import numpy as np

from tfhalo.atomic import save_npz_atomic, write_json_atomic

PathLike = Union[str, os.PathLike]

__all__ = [
    "Cache", "StaleCacheError", "StudyInputError", "ensure_suite", "fingerprint", "machine_details", "machine_info",
    "run_cli",
    "summary_row",
]

#: Name of the array (``.npz``) or field (``.json``) that holds a cache file's key.
KEY_FIELD = "__cache_key__"


class StudyInputError(ValueError):
    """A study's inputs (suite, output directory) cannot be used; raised before any work.

    :func:`run_cli` reports it like a bad argument: one message, exit code 2.
    """


class StaleCacheError(StudyInputError):
    """A cache file was made with other settings than the current ones.

    Attributes:
        path: the cache file.
        differences: ``{key: (cached value, current value)}``; ``{"<settings not recorded>": ...}``
            for a file without a readable key.
    """

    def __init__(self, path: Path, differences: dict):
        self.path, self.differences = Path(path), dict(differences)
        diff = "; ".join(f"{k}: cached {a!r}, now {b!r}" for k, (a, b) in self.differences.items())
        super().__init__(
            f"{self.path} was made with different settings ({diff}). Use a fresh output directory "
            f"(--out), or pass --overwrite to discard it."
        )


# --------------------------------------------------------------------------- fingerprints


def _feed(h, obj) -> None:
    """Feed a canonical, type-tagged encoding of ``obj`` into the hash ``h``."""
    if isinstance(obj, (np.ndarray, np.generic)):
        arr = np.ascontiguousarray(obj)
        h.update(b"ndarray" + json.dumps([arr.dtype.str, list(arr.shape)]).encode())
        h.update(arr.tobytes())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(b"dataclass" + type(obj).__qualname__.encode())
        _feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    elif isinstance(obj, dict):
        h.update(b"dict%d" % len(obj))
        for k in sorted(obj, key=str):
            _feed(h, str(k))
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(b"list%d" % len(obj))
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, os.PathLike):
        _feed(h, os.fspath(obj))
    elif obj is None or isinstance(obj, (bool, int, float, str)):
        # JSON text: 1 and 1.0 differ, as they would after a round trip through a cache file.
        h.update(b"json" + json.dumps(obj).encode())
    else:
        raise TypeError(f"fingerprint cannot hash objects of type {type(obj).__name__}. Received: {obj!r:.80}")


def fingerprint(*objects) -> str:
    """SHA-256 hex digest of arrays, dataclasses and JSON-able objects.

    Arrays are hashed with their dtype and shape, so the same bytes in another
    shape differ; dict keys are sorted, so insertion order does not matter;
    tuples and lists hash alike (as they do after a JSON round trip).

    Args:
        *objects: NumPy arrays or scalars, dataclasses, dicts, lists, tuples,
            strings, numbers, ``None``, paths, nested in any way.

    Returns:
        64 hexadecimal characters.

    Raises:
        TypeError: an object of another type.

    Example:
        >>> fingerprint({"a": 1, "b": (1, 2)}) == fingerprint({"b": [1, 2], "a": 1})
        True
        >>> fingerprint(np.zeros(4)) == fingerprint(np.zeros((2, 2)))
        False
    """
    h = hashlib.sha256()
    _feed(h, list(objects))
    return h.hexdigest()


# --------------------------------------------------------------------------------- cache


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"cache keys must be JSON-able. Received a {type(obj).__name__}")


def normalize_key(key: dict) -> dict:
    """``key`` as it reads back from a cache file (tuples become lists, NumPy scalars Python ones)."""
    if not isinstance(key, dict):
        raise TypeError(f"key must be a dict. Received: {type(key).__name__}")
    return json.loads(json.dumps(key, default=_json_default, sort_keys=True))


class Cache:
    """Steps of a study cached as files that record the settings they were made with.

    Each file stores the cache's ``key`` (a JSON-able dict of the settings that
    decide its content) inside it: a ``.npz`` file as the JSON string array
    ``__cache_key__``, any other name as JSON ``{"__cache_key__": key, "data": payload}``.
    Loading a file whose key differs raises :class:`StaleCacheError` naming the
    file and the differing keys, so a rerun with other settings never silently
    reuses a result.

    Args:
        directory: where the files live (created on the first save).
        key: the settings; tuples and NumPy scalars are normalised as JSON would.
        overwrite: discard (delete) a stale file instead of raising.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = Cache(d, {"seed": 0}).save("step.json", {"loss": 1.5})
        >>> Cache(d, {"seed": 0}).load("step.json")
        {'loss': 1.5}
        >>> Cache(d, {"seed": 1}).load("step.json")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tfhalo.studies.common.StaleCacheError: .../step.json was made with different settings (seed: ...
    """

    def __init__(self, directory: PathLike, key: dict, *, overwrite: bool = False):
        self.directory = Path(directory)
        self.key = normalize_key(key)
        self.overwrite = bool(overwrite)

    @property
    def fingerprint(self) -> str:
        """:func:`fingerprint` of the key."""
        return fingerprint(self.key)

    def path(self, name: str) -> Path:
        """The file of step ``name`` (e.g. ``"particle_sets.npz"``, ``"DONE"``)."""
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise ValueError(f"name must be a plain file name. Received: name={name!r}")
        return self.directory / name

    def exists(self, name: str) -> bool:
        """Whether step ``name`` has a file (whatever its key)."""
        return self.path(name).is_file()

    def stored_key(self, name: str) -> Optional[dict]:
        """The key recorded in step ``name``'s file; ``None`` if missing, unreadable or unrecorded."""
        path = self.path(name)
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    return json.loads(str(z[KEY_FIELD]))
            stored = json.loads(path.read_text())
            return stored.get(KEY_FIELD) if isinstance(stored, dict) else None
        except (OSError, ValueError, KeyError, AttributeError):
            return None

    def differences(self, name: str) -> dict:
        """``{key: (cached, current)}`` where step ``name``'s file differs; ``{}`` when it matches or is missing."""
        if not self.exists(name):
            return {}
        stored = self.stored_key(name)
        if not isinstance(stored, dict):
            return {"<settings not recorded>": (None, "current settings")}
        return {k: (stored.get(k), self.key.get(k)) for k in sorted(set(stored) | set(self.key))
                if stored.get(k) != self.key.get(k)}

    def check(self, *names: str) -> None:
        """Raise :class:`StaleCacheError` for the first of ``names`` whose file has another key.

        With ``overwrite`` the stale files are deleted instead. Missing files pass.
        """
        for name in names:
            diff = self.differences(name)
            if diff:
                if self.overwrite:
                    self.discard(name)
                else:
                    raise StaleCacheError(self.path(name), diff)

    def discard(self, *names: str) -> None:
        """Delete the files of ``names`` (missing ones are ignored)."""
        for name in names:
            self.path(name).unlink(missing_ok=True)

    def load(self, name: str):
        """Step ``name``'s content, or ``None`` if it has no file.

        Returns:
            ``{array name: ndarray}`` for a ``.npz`` file (the key left out),
            the saved payload otherwise.

        Raises:
            StaleCacheError: the file was made with another key (and ``overwrite`` is off).
        """
        self.check(name)
        path = self.path(name)
        if not path.is_file():
            return None
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files if k != KEY_FIELD}
        return json.loads(path.read_text()).get("data")

    def save(self, name: str, payload=None, **arrays) -> Path:
        """Write step ``name`` atomically with the key inside.

        Args:
            name: file name; ``.npz`` takes ``**arrays``, any other name the JSON-able ``payload``.

        Returns:
            The file's path.
        """
        path = self.path(name)
        if path.suffix == ".npz":
            if payload is not None:
                raise TypeError(f"{name}: a .npz step takes arrays as keyword arguments, not a payload")
            if KEY_FIELD in arrays:
                raise ValueError(f"{KEY_FIELD} is reserved for the cache key")
            return save_npz_atomic(path, **{KEY_FIELD: np.asarray(json.dumps(self.key))}, **arrays)
        if arrays:
            raise TypeError(f"{name}: arrays need a .npz name")
        return write_json_atomic(path, {KEY_FIELD: self.key, "data": payload})


# --------------------------------------------------------------------------------- suites


def check_config_header(config) -> None:
    """Check (and normalise in place) the fields every study's frozen ``Config`` starts with.

    ``name`` (non-empty string), ``seed`` and ``sampler_seed`` (None or an
    integer in ``[0, 2^32)``) and ``sim_preset`` (a :data:`tfhalo.sim.PRESETS` name);
    called first by each ``Config.__post_init__``.

    Raises:
        ValueError: naming the field and the value.
    """
    from tfhalo.sim import PRESETS as SIM_PRESETS
    from tfhalo.validation import check_choice, check_int

    if not isinstance(config.name, str) or not config.name:
        raise ValueError(f"name must be a non-empty string. Received: name={config.name!r}")
    object.__setattr__(config, "seed", check_int("seed", config.seed, minimum=0, maximum=2**32 - 1))
    if config.sampler_seed is not None:
        object.__setattr__(config, "sampler_seed",
                           check_int("sampler_seed", config.sampler_seed, minimum=0, maximum=2**32 - 1))
    check_choice("sim_preset", config.sim_preset, sorted(SIM_PRESETS))


#: The sampler's argument names -> the studies' field names, for its error messages.
SAMPLER_FIELDS = {"num_chains": "n_chains", "num_warmup": "n_warmup", "num_samples": "n_samples",
                  "num_leapfrog_steps": "leapfrog_steps"}


def check_sampler_settings(config) -> None:
    """Check a study ``Config``'s sampler settings by the sampler's own rules, in the study's names.

    ``config.sampler_config()`` is built, so that the sampler's rules (the kernel,
    target acceptance, chain and draw counts, tree depth, a warm-up of 0 or at least its
    shortest adaptation window, ...) are checked on construction, with its
    argument names replaced by the config's, and the study's fields passed
    through unchanged take the normalised values. A study checks only its own
    rules beyond these (e.g. more draws than the sampler's minimum).

    Raises:
        ValueError: naming the field and the value.
    """
    try:
        sampler = config.sampler_config()
    except ValueError as err:
        message = str(err)
        for theirs, ours in SAMPLER_FIELDS.items():
            message = message.replace(theirs, ours)
        raise ValueError(message) from None
    # The sampler's checks normalise what they accept (e.g. 10.0 -> 10); the study's fields that
    # it passed through unchanged take the normalised values, so the config stays JSON-able.
    fields = {f.name for f in dataclasses.fields(config)}
    for theirs, value in sampler.to_dict().items():
        ours = SAMPLER_FIELDS.get(theirs, theirs)
        if ours in fields and getattr(config, ours) == value:
            object.__setattr__(config, ours, value)


def preset_values(config_class, presets: dict, name: str, overrides: dict) -> dict:
    """A copy of preset ``name``'s field values, after checking the name and the override fields.

    The one rule of every study's ``Config.preset``: an unknown preset or a field
    the config does not have is refused, naming it, before any value is used.

    Args:
        config_class: the study's frozen dataclass (its fields, less ``name`` and ``seed``,
            are the ones ``overrides`` may set).
        presets: ``{preset name: {field: value}}``.
        name: the preset asked for.
        overrides: the fields the caller replaces.

    Returns:
        ``dict(presets[name])``.

    Raises:
        ValueError: an unknown preset or field.
    """
    from tfhalo.validation import check_choice

    check_choice("preset", name, sorted(presets))
    fields = {f.name for f in dataclasses.fields(config_class)} - {"name", "seed"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown Config fields {unknown}. Expected a subset of {sorted(fields)}")
    return dict(presets[name])


def preset_config(config_class, presets: dict, name: str, seed: int, overrides: dict):
    """``config_class(name=name, seed=seed, **preset values with overrides)``, after :func:`preset_values`."""
    values = preset_values(config_class, presets, name, overrides)
    values.update(overrides)
    return config_class(name=name, seed=seed, **values)


def _preset_name_and_params(sim_preset):
    from tfhalo.sim.suite import SimulationPreset, resolve_preset

    if not isinstance(sim_preset, (str, SimulationPreset)):
        raise ValueError(f"sim_preset must be a preset name or a SimulationPreset. Received: sim_preset={sim_preset!r}")
    params = resolve_preset(sim_preset)
    return (sim_preset if isinstance(sim_preset, str) else "custom"), params


def check_run_paths(suite, out) -> Tuple[Path, Path]:
    """A study ``run``'s ``suite`` and ``out`` directories as paths, checked before any work.

    Each must be a non-empty path (an empty one would mean the current directory)
    that is not an existing file.

    Returns:
        ``(Path(suite), Path(out))``.

    Raises:
        StudyInputError: naming the argument and the value (a usage error, exit 2, from
            :func:`run_cli`).

    Example:
        >>> check_run_paths("runs/demo/suite", "")
        Traceback (most recent call last):
        ...
        tfhalo.studies.common.StudyInputError: out must be a non-empty directory path. Received: out=''
    """
    for name, value in (("suite", suite), ("out", out)):
        if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
            raise StudyInputError(f"{name} must be a non-empty directory path. Received: {name}={value!r}")
    paths = Path(suite), Path(out)
    for name, path in zip(("suite", "out"), paths):
        if path.exists() and not path.is_dir():
            raise StudyInputError(f"{name} must be a directory. Received: {name}={str(path)!r} (a file)")
    return paths


def ensure_suite(suite_dir: PathLike, sim_preset, n_sims: int, seed: int, progress: bool = True) -> List[Path]:
    """The simulations a study runs on: use, generate or extend the suite in ``suite_dir``.

    The one rule for every study:

    * no suite there (missing or empty directory): generate ``n_sims``
      simulations of ``sim_preset`` with master seed ``seed``;
    * a generated suite (``suite.json``) of the same preset parameters and
      seed: finish it and extend it in place to ``n_sims``, and return its
      first ``n_sims`` simulations. Extending is exact: simulation ``i``'s
      seed depends only on the master seed and ``i``
      (:func:`tfhalo.sim.suite.simulation_seeds`), so the simulations already
      there are reused unchanged;
    * a generated suite of other parameters or seed, or a directory of a
      user's own ``.h5`` files: used as it is, all of its (finished)
      simulations, when it holds at least ``n_sims``.

    Args:
        suite_dir: the suite directory.
        sim_preset: a :data:`tfhalo.sim.PRESETS` name or a :class:`~tfhalo.sim.SimulationPreset`.
        n_sims: simulations the study needs.
        seed: master seed of a generated suite.
        progress: progress bars and one line saying what is done.

    Returns:
        Paths of the ``.h5`` files, in suite order.

    Raises:
        ValueError: a bad argument (before anything is written).
        StudyInputError: a suite used as it is holds fewer than ``n_sims`` simulations,
            or ``suite_dir`` is a file.

    Example:
        >>> paths = ensure_suite("runs/demo/suite", "quick", n_sims=6, seed=0)   # doctest: +SKIP
    """
    from tfhalo.sim import generate_suite, list_suite
    from tfhalo.sim.suite import MANIFEST_NAME, read_manifest
    from tfhalo.validation import check_int, check_seed

    n_sims = check_int("n_sims", n_sims, minimum=1)
    seed = check_seed("seed", seed, allow_none=False)
    name, params = _preset_name_and_params(sim_preset)
    suite_dir = Path(suite_dir)
    if suite_dir.exists() and not suite_dir.is_dir():
        raise StudyInputError(f"suite must be a directory. Received: suite={str(suite_dir)!r} (a file)")

    def say(msg):
        if progress:
            print(msg, flush=True)

    def generate():
        return generate_suite(suite_dir, preset=sim_preset, n_sims=n_sims, seed=seed, progress=progress)

    if (suite_dir / MANIFEST_NAME).is_file():
        manifest = read_manifest(suite_dir)
        same = (normalize_key(manifest.get("parameters", {})) == normalize_key(params.to_dict())
                and manifest.get("master_seed") == seed)
        if same:
            if manifest.get("n_sims", 0) < n_sims:
                say(f"extending the simulation suite {suite_dir} from {manifest.get('n_sims')} to {n_sims} "
                    f"simulations")
            return generate()
        paths = list_suite(suite_dir)
        source = (f"the suite {suite_dir} (preset {manifest.get('preset')!r}, seed {manifest.get('master_seed')}, "
                  f"not the requested {name!r} with seed {seed})")
    elif suite_dir.is_dir() and any(suite_dir.glob("*.h5")):
        paths = sorted(suite_dir.glob("*.h5"))
        source = f"the simulation files of {suite_dir}"
    else:
        say(f"generating {n_sims} {name!r} simulations (seed {seed}) in {suite_dir}")
        return generate()
    if len(paths) < n_sims:
        raise StudyInputError(
            f"{source} holds {len(paths)} finished simulations; the study needs n_sims={n_sims}. "
            f"Pass a smaller n_sims, or another suite directory to generate one."
        )
    say(f"using the {len(paths)} simulations of {source} as they are")
    return list(paths)


# ------------------------------------------------------------------------------------ CLI


def run_cli(parser, make_config: Callable, run: Callable, argv=None) -> int:
    """Run a study from the command line; returns the process exit code.

    1. ``parser.parse_args(argv)`` (argparse reports its own errors: exit 2);
    2. ``config = make_config(args)``: a ``ValueError`` becomes ``parser.error``
       (usage + message, exit 2), before any work and before any file is written;
    3. ``run(config, args)``: a :class:`StudyInputError` (a stale cache, a
       too-small suite, raised by the study before its work) is reported the
       same way; ``KeyboardInterrupt`` prints one line on stderr and gives 130,
       with no traceback.

    Args:
        parser: an ``argparse.ArgumentParser``.
        make_config: ``args -> config``; validates every argument.
        run: ``(config, args) -> anything``.
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        0 on success, 2 for bad arguments, 130 on interruption.

    Example:
        >>> run = lambda config, args: study.run(config, args.suite, args.out)   # doctest: +SKIP
        >>> sys.exit(run_cli(parser, make_config, run))                          # doctest: +SKIP
    """
    try:
        try:
            args = parser.parse_args(argv)
            try:
                config = make_config(args)
            except ValueError as err:
                parser.error(str(err))
            try:
                run(config, args)
            except StudyInputError as err:
                parser.exit(2, f"{parser.prog}: error: {err}\n")
        except SystemExit as exc:  # argparse's exits (errors: 2, --help: 0)
            code = exc.code
            return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        sys.stderr.write(f"{parser.prog}: interrupted; rerun the same command to resume\n")
        sys.stderr.flush()
        return 130
    return 0


# --------------------------------------------------------------------------------- processes

#: The variables that size a process's thread pools: OpenMP and the BLAS libraries (NumPy, SciPy) and
#: TensorFlow's intra- and inter-op pools, read when each starts.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                     "TF_NUM_INTEROP_THREADS")


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _thread_variables(threads: int) -> dict:
    """The environment that sizes every thread pool ``threads`` (XLA's CPU pool: one thread, or its default)."""
    env = {k: str(threads) for k in _THREAD_VARIABLES}
    if threads == 1:  # XLA has no thread-count flag, only this switch to one thread
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
    return env


@contextlib.contextmanager
def _thread_environment(threads: int):
    """``os.environ`` with :func:`_thread_variables`, restored on exit; processes spawned inside inherit it."""
    env = _thread_variables(threads)
    saved = {k: os.environ.get(k) for k in env}
    try:
        os.environ.update(env)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def map_in_processes(fn: Callable, calls: List[tuple], workers: int) -> list:
    """``[fn(*args) for args in calls]``, up to ``workers`` at once in fresh processes.

    Each process is spawned (a fork of a process whose TensorFlow or JAX runtime has
    started is unsafe) with its thread pools sized ``cores // workers`` (at least 1), so the
    calls share the machine's cores instead of competing for them.  Small programs such
    as a sampler on a 16^3 grid gain little from a second thread, so on 2 cores two
    calls at once take about as long as one.  Their output goes to this process's stdout
    and stderr.

    Args:
        fn: a module-level function (it is pickled by name), returning something picklable.
        calls: the argument tuples, each picklable.
        workers: processes at once, at least 1.

    Returns:
        The values in the order of ``calls``.

    Raises:
        ValueError: ``workers`` below 1 or ``calls`` not a list of tuples.
        Exception: the first call's exception (in the order of ``calls``); the
            other processes are terminated.

    Example:
        >>> map_in_processes(pow, [(2, 3), (3, 2)], workers=2)     # doctest: +SKIP
        [8, 9]
    """
    import multiprocessing
    import threading

    from tfhalo.validation import check_int

    workers = check_int("workers", workers, minimum=1)
    if not isinstance(calls, list) or not all(isinstance(c, tuple) for c in calls):
        raise ValueError(f"calls must be a list of argument tuples. Received: calls={calls!r:.200}")
    if not calls:
        return []
    workers = min(workers, len(calls))
    threads = max(1, available_cores() // workers)
    context = multiprocessing.get_context("spawn")
    # The pool spawns its processes here, and they start with this environment: no runtime in them has
    # sized its threads before it is set.
    with _thread_environment(threads):
        pool = context.Pool(processes=workers)
    try:
        failed = threading.Event()  # a failure ends the wait at once, not when the calls before it finish
        pending = [pool.apply_async(fn, args, error_callback=lambda _: failed.set()) for args in calls]
        while not failed.wait(0.2) and not all(p.ready() for p in pending):
            pass
        for p in pending:
            if p.ready() and not p.successful():
                p.get()  # raises its exception
        values = [p.get() for p in pending]
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.close()
        pool.join()
    return values


# --------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_details() -> dict:
    """Where a result was computed, field by field (without importing TensorFlow).

    Returns:
        ``{"platform", "cpu", "cpu_count", "python", "numpy", "tensorflow", "keras",
        "tensorflow_probability", "OPENBLAS_CORETYPE"}``; a missing package's version is
        ``None``. ``OPENBLAS_CORETYPE`` is recorded because OpenBLAS kernels, and so
        float rounding, depend on it.

    Example:
        >>> sorted(machine_details())[:3]
        ['OPENBLAS_CORETYPE', 'cpu', 'cpu_count']
    """
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tensorflow": _version("tensorflow"),
        "keras": _version("keras"),
        "tensorflow_probability": _version("tensorflow-probability"),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }


def machine_info() -> str:
    """One line for ``results.json``'s ``"machine"``: CPU, cores, platform, TF/Keras, OPENBLAS_CORETYPE.

    Example:
        >>> "OPENBLAS_CORETYPE=" in machine_info()
        True
    """
    d = machine_details()
    return (f"{d['cpu']} ({d['cpu_count']} cores), {d['platform']}, TF {d['tensorflow']}, "
            f"Keras {d['keras']}, OPENBLAS_CORETYPE={d['OPENBLAS_CORETYPE'] or 'unset'}")


# --------------------------------------------------------------------------------- summary


def summary_row(quantity: str, value, error=None, error_kind: Optional[str] = None, paper=None,
                note: str = "") -> dict:
    """One row of a ``results.json`` ``"summary"`` list.

    Args:
        quantity: what is measured, e.g. ``"Pearson r (z0 CNN)"``.
        value: the number (non-finite becomes ``None``).
        error: a symmetric error, a ``[low, high]`` interval, or ``None``.
        error_kind: how ``error`` was obtained: ``"68% bootstrap"``, ``"standard error"``, ``"MCSE"``, ...
        paper: the published value, or ``None``.
        note: definition or caveat.

    Returns:
        ``{"quantity", "value", "error", "error_kind", "paper", "note"}``, JSON-able.

    Example:
        >>> summary_row("r", 0.9, [0.88, 0.92], "68% bootstrap", 0.96)["error"]
        [0.88, 0.92]
    """
    def num(x):
        if x is None:
            return None
        x = float(x)
        return x if np.isfinite(x) else None

    if error is not None and np.ndim(error) == 1:
        error = [num(e) for e in error]
        if len(error) != 2:
            raise ValueError(f"error must be a number or [low, high]. Received: error={error!r}")
    else:
        error = num(error)
    if error is not None and error_kind is None:
        raise ValueError(f"error_kind must say how the error of {quantity!r} was obtained. Received: error_kind=None")
    return {"quantity": str(quantity), "value": num(value), "error": error, "error_kind": error_kind,
            "paper": num(paper), "note": str(note)}
