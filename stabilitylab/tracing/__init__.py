"""Trace a real PyTorch model in a low-precision format: the first op that loses a value, why, by how many bits,
and the rewrite that fixes it.

Two ways in, one :func:`run` underneath:

* ``stabilitylab.trace("model.py:build", dtype="bf16")`` (the command line's ``stabilitylab trace``) builds
  the model and batch, puts them in each format (:func:`.target.prepare`) and runs one step (forward, and
  backward when the step returns a scalar loss) under the shadow (:mod:`.shadow`);
* ``with stabilitylab.trace(dtype="bf16") as t: loss = model(x); loss.backward()`` traces whatever runs in the
  block (put the model in the format yourself for bfloat16 / float16: ``model.to(torch.bfloat16)``; other
  formats are emulated on float32 tensors), then ``t.summary``, ``t.findings``, ``t.to_json()``.

PyTorch is imported only here and in what this package imports lazily; without it, one line names the
``torch`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError, described
from ..numerics.formats import Format
from .result import FormatRun, TraceResult, float64_note

__all__ = ["trace", "run", "run_headroom", "TraceResult", "Tracer", "formats_of"]


def formats_of(dtype) -> tuple[Format, ...]:
    """The formats ``dtype`` names (a name, a policy, a Format, a group such as ``all``, or a sequence of them; a
    tuple is one ``-d`` value of the command line); a group's float64 is left out (the references are float64),
    float64 named alone is an InputError, as is an unknown name."""
    from ..numerics.policies import chosen

    items = [dtype] if isinstance(dtype, (str, Format)) else list(dtype or ())
    if not items:
        raise InputError("give at least one format (-d bf16)", "-d")
    out: list[Format] = []
    for item in items:
        group = item if isinstance(item, tuple) else None  # a -d value of the command line (all: six formats)
        if isinstance(item, Format):
            out.append(item)
            continue
        try:
            group = group or chosen(str(item))
        except (KeyError, ValueError) as exc:
            raise InputError(str(exc.args[0]) if exc.args else str(exc), "-d") from None
        # a group (all, every) traces its formats narrower than the float64 references; float64 alone is refused
        out.extend(f for f in group if len(group) == 1 or f.compute_format.name != "float64")
    wide = [f.name for f in out if f.compute_format.name == "float64"]
    if wide:
        raise InputError(f"{wide[0]}: the trace's references are float64 themselves; trace a narrower format "
                         "(bf16, fp16, fp32, fp8 ...)", "-d")
    return tuple(dict.fromkeys(out))


class Tracer:
    """The context manager of ``stabilitylab.trace(dtype=...)``: traces one format; after the block,
    :attr:`result` (a :class:`TraceResult`) and its ``summary``, ``findings``, ``to_json()``.

    ``rows=K``: the batch is what the block passes to its outermost module call; the tensors among that call's
    positional arguments are cut to their first K entries (a global forward pre-hook), so the model runs, and
    is traced, on K rows (its outputs have K rows)."""

    def __init__(self, fmt: Format, tolerance: float | None = None, rows: int | None = None):
        from .shadow import Shadow

        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
            raise InputError(f"rows must be an integer >= 1, not {rows!r}", "rows")
        self.fmt = fmt
        self.rows = rows
        self.shadow = Shadow(fmt, tolerance)
        self._mode = None
        self._hooks: list = []
        self._depth = 0
        self.result: TraceResult | None = None

    def __enter__(self) -> "Tracer":
        if self.rows is not None:
            self._cut_the_batch()
        self._mode = self.shadow.mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        self._mode.__exit__(*exc)
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        run = FormatRun(self.fmt, self.shadow.native is not None, self.shadow.records, self.shadow.twin_failures)
        notes = [f"rows={self.rows}: the outermost module call's tensor arguments were cut to {self.rows} rows"] \
            if self.rows is not None else []
        notes += float64_note(self.fmt.name, self.shadow.lost_in_float64)
        records = self.shadow.records
        if self.shadow.native is not None and records and not any(r.format == self.fmt.name for r in records):
            judged = sorted({r.format for r in records})
            notes.append(f"no op ran in {self.fmt.name}: the block's tensors were {', '.join(judged)}, and each op was "
                         f"judged in its own dtype; put the model and batch in the format first "
                         f"(model.to(torch.{self.fmt.name}))")
        self.result = TraceResult([run], target="(traced block)", rows=self.rows, notes=notes)
        return False

    def _cut_the_batch(self) -> None:
        from torch.nn.modules import module as nn_module

        from .shadow import torch_module

        torch = torch_module()
        rows = self.rows

        def before(module, args):
            self._depth += 1
            if self._depth == 1:
                return tuple(a[:rows] if isinstance(a, torch.Tensor) and a.dim() >= 1 else a for a in args)
            return None

        def after(module, args, output):
            self._depth -= 1

        self._hooks = [nn_module.register_module_forward_pre_hook(before),
                       nn_module.register_module_forward_hook(after, always_call=True)]

    def _done(self) -> TraceResult:
        if self.result is None:
            raise RuntimeError("the trace is not finished: read it after the with block")
        return self.result

    @property
    def summary(self) -> list[dict]:
        return self._done().summary

    @property
    def findings(self) -> list:
        return self._done().findings

    def to_dict(self) -> dict:
        return self._done().to_dict()

    def to_json(self) -> str:
        return self._done().to_json()

    def to_markdown(self) -> str:
        return self._done().to_markdown()


def trace(target=None, dtype="bfloat16", *, rows: int | None = None, backward: bool = True,
          tolerance: float | None = None):
    """``trace(TARGET, dtype)`` runs one step of a target (``file.py:build``, ``module:build``, a
    :class:`~.target.Target` or a ``(model, batch)`` / ``(model, inputs, loss_fn)`` tuple) in each format and
    returns a :class:`TraceResult`; ``trace(dtype=...)`` without a target is a context manager (one format)."""
    if target is None:
        formats = formats_of(dtype)
        if len(formats) != 1:
            raise InputError("a with block traces one format: give one dtype", "dtype")
        return Tracer(formats[0], tolerance, rows)
    return run(target, formats_of(dtype), rows=rows, backward=backward, tolerance=tolerance)


def run(target, formats: Sequence[Format], *, rows: int | None = None, backward: bool = True,
        tolerance: float | None = None, model_file: str | None = None, inputs_file: str | None = None) -> TraceResult:
    """One step of the target in every format under the shadow (the command line's and the API's run)."""
    from . import target as targets
    from .shadow import Shadow, low_dtype

    t = _target(target, model_file, inputs_file)
    runs, notes = [], []
    for fmt in formats:
        dtype = low_dtype(fmt)
        model, inputs = targets.prepare(t, dtype, rows)
        shadow = Shadow(fmt, tolerance)
        try:
            with shadow.mode():
                out = t.step(model, inputs)
                if backward and _is_loss(out):
                    out.backward()
        except InputError:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's model failed (or exited): one line
            raise InputError(f"{t.name} failed in {fmt.name}: {described(exc)}", "TARGET") from None
        if backward and not _is_loss(out):
            notes.append(f"{fmt.name}: the step returned no scalar loss that requires a gradient: forward only")
        notes += float64_note(fmt.name, shadow.lost_in_float64)
        runs.append(FormatRun(fmt, dtype is not None, shadow.records, shadow.twin_failures))
    return TraceResult(runs, target=t.name, rows=rows, backward=backward, notes=notes)


def _target(target, model_file: str | None = None, inputs_file: str | None = None):
    """The :class:`~.target.Target` a TARGET, a Target, a tuple or ``--model`` / ``--inputs`` names (InputError
    with one line otherwise, or without torch: naming the extra)."""
    from ..errors import MissingLibrary
    from . import target as targets
    from .shadow import torch_module

    try:
        torch_module()
    except MissingLibrary as exc:  # one line naming the extra (the command line: exit 2)
        raise InputError(str(exc)) from None
    if model_file is not None:
        return targets.from_files(model_file, inputs_file)
    if isinstance(target, targets.Target):
        return target
    if isinstance(target, str):
        return targets.load(target)
    if isinstance(target, tuple) and len(target) in (2, 3):
        return targets.Target(target[0], target[1], target[2] if len(target) == 3 else None, "(model, batch)")
    raise InputError("target: path/to/file.py:build, module:build or a (model, batch) tuple", "TARGET")


def run_headroom(target, dtype=None, *, rows: int | None = None, model_file: str | None = None,
             inputs_file: str | None = None):
    """``trace --headroom``: one float32 forward of the target's model on its batch (cut to ``rows``) with a hook
    on every module, no shadow: every module's output against each format's range (:func:`.headroom.measure`;
    ``dtype`` None: :data:`.headroom.DEFAULT_FORMATS`)."""
    from . import headroom as room
    from . import target as targets

    t = _target(target, model_file, inputs_file)
    formats = room.DEFAULT_FORMATS if dtype is None else formats_of(dtype)
    model, inputs = targets.prepare(t, None, rows)
    try:
        return room.measure(model, inputs, formats)
    except InputError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's model failed (or exited): one line
        raise InputError(f"{t.name} failed in its float32 forward: {described(exc)}", "TARGET") from None


def _is_loss(out) -> bool:
    return getattr(out, "requires_grad", False) and getattr(out, "dim", lambda: 1)() == 0
