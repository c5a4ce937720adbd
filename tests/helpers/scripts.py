"""Load a script of ``experiments/`` or ``benchmarks/`` as a module, to test its ``main`` and helpers."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_script(path, monkeypatch=None):
    """The module of the script at ``path`` (relative to the repository root).

    With ``monkeypatch``, the module is registered in ``sys.modules`` for the
    test's duration: dataclasses defined in a script look their module up there.
    """
    name = Path(path).stem + "_under_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    if monkeypatch is not None:
        monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module
