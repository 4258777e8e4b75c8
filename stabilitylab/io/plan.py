"""A command's outputs and inputs, named by its parameters, checked before any work (issue #18).

The command line calls :func:`check_params` with the parsed parameters of the running command; the
parameter names are the CLI's (``output``, ``folder``, ``emit_pytest``, ``save_baseline``,
``baseline_path`` with ``update``, trace's ``json_path`` and ``markdown_path`` (``-``: standard output),
``figure_path``; ``logits``, ``labels``, ``target``, ``model_file``, ``inputs_file``).  The rules are
:func:`stabilitylab.io.atomic.check_outputs`'s.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from . import atomic

__all__ = ["OUTPUT_PARAMS", "INPUT_PARAMS", "audited_file", "outputs_of", "inputs_of", "check_params"]

# parameter -> (option shown in messages, kind for atomic.Output); check --update validates --baseline itself
# before any work, with more precise messages than a schema check ("validated")
OUTPUT_PARAMS = {"output": ("-o", "file"), "folder": ("-o", "folder"), "emit_pytest": ("--emit-pytest", "file"),
                 "save_baseline": ("--save-baseline", "baseline"), "baseline_path": ("--baseline", "validated"),
                 "json_path": ("--json", "file"), "markdown_path": ("--markdown", "file"),
                 "figure_path": ("--figure", "file")}
INPUT_PARAMS = {"logits": "--logits", "labels": "--labels", "target": "TARGET", "model_file": "--model",
                "inputs_file": "--inputs"}
STDOUT = "-"  # --json - / --markdown -: standard output, not a file


def audited_file(target: str) -> str | None:
    """The source file of an audit target ``path/to/file.py:function`` or ``module:function`` (a module
    found on sys.path without importing anything), or None (an adapter, or not found)."""
    where, sep, _ = str(target).rpartition(":")
    if not sep or not where:
        return None
    if where.endswith(".py") or "/" in where or os.sep in where:
        return where
    parts = where.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    for entry in sys.path:
        base = Path(entry or ".").joinpath(*parts)
        for candidate in (base.with_name(base.name + ".py"), base / "__init__.py"):
            if candidate.is_file():
                return str(candidate)
    return None


def outputs_of(params: Mapping) -> list[atomic.Output]:
    """The output files named by a command's parameters (``--baseline`` only with ``--update``)."""
    return [atomic.Output(option, params[name], kind) for name, (option, kind) in OUTPUT_PARAMS.items()
            if params.get(name) is not None and (name != "baseline_path" or params.get("update"))
            and not (name in ("json_path", "markdown_path") and params[name] == STDOUT)]


def inputs_of(params: Mapping) -> list[tuple[str, str]]:
    """``(option, path)`` of the files a command reads."""
    out = []
    for name, option in INPUT_PARAMS.items():
        value = params.get(name)
        if value:
            path = audited_file(value) if name == "target" else value
            if path:
                out.append((option, path))
    return out


def check_params(params: Mapping, force: bool = False) -> None:
    """Refuse (OutputRefused) the outputs of a command with these parameters that would lose a file."""
    atomic.check_outputs(outputs_of(params), inputs_of(params), force=force)
