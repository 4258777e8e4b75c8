"""The user's code, named ``path/to/file.py:name`` or ``module:name``: imported once, the callable returned.

Both ``audit file.py:fn`` and ``trace file.py:build`` load their target here.  A file is imported under a
name unique to its resolved path (a digest: the same in every process, unlike ``hash()``), registered in
``sys.modules`` while it runs, as an import does (``@dataclass`` with postponed annotations, pickle and
multiprocessing find the module by its name), with its folder on ``sys.path`` (it may import its
neighbours); a module name is imported from the current directory too.  Warnings raised while the user's
module runs are silenced (they are the user's, not ours).  Every failure is one line, built by the caller's
``fail(message)`` (its own exception class), a ``sys.exit()`` in the user's module too (never the user's exit
status); ``guard`` wraps the user's code (the audit's timeout).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import described

__all__ = ["is_file", "module_name", "load_callable"]


def is_file(where: str) -> bool:
    """Whether the part of a target before its last ``:`` names a file (else a module)."""
    return where.endswith(".py") or "/" in where or os.sep in where


def _word(text: str) -> str:
    """``text`` with every character that may not be in a Python name replaced by ``_``."""
    return "".join(ch if ch.isalnum() and ch.isascii() or ch == "_" else "_" for ch in text)


def module_name(path: Path) -> str:
    """The name a target file's module is registered under in ``sys.modules``: unique per file (its resolved
    path's digest) and the same in every process."""
    digest = hashlib.sha256(os.fsencode(str(path.resolve()))).hexdigest()[:16]
    return f"_stabilitylab_target_{_word(path.stem)}_{digest}"


def load_callable(where: str, name: str, fail: Callable[[str], Exception],
                  guard: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                  quote: Callable[[BaseException], str] = described) -> Callable:
    """``where:name`` imported (see the module docstring); ``name`` may be dotted (``Class.method``).  Raises
    ``fail(one line)`` for a missing file, an import that fails (``quote(exc)`` says how), a missing attribute
    or an object that is not callable."""
    if is_file(where):
        path = Path(where)
        if not path.is_file():
            raise fail(f"target file {where} does not exist or is not a file")
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        registered, module = module_name(path), None
        try:
            loader_spec = importlib.util.spec_from_file_location(registered, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ImportError("not a Python file")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[registered] = module
            with warnings.catch_warnings(), guard():
                warnings.simplefilter("ignore")
                loader_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any error of the user's module (sys.exit too)
            if module is not None and sys.modules.get(registered) is module:
                del sys.modules[registered]
            raise fail(f"could not import {where}: {quote(exc)}") from None
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            with warnings.catch_warnings(), guard():
                warnings.simplefilter("ignore")
                module = importlib.import_module(where)
        except (Exception, SystemExit) as exc:  # noqa: BLE001
            raise fail(f"could not import module {where!r}: {quote(exc)}") from None
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise fail(f"{where} has no attribute {name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise fail(f"{where}:{name} is not callable (it is a {type(obj).__name__})")
    return obj
