"""Precision policies: which format inputs are stored in, operations compute in and sums accumulate in.

A policy is a :class:`~.formats.Format` whose ``storage`` / ``compute`` / ``accumulate`` fields are
set; its own encoding (and so ``max``, ``tiny``, ``ulp``, ``round``, ``default_tolerance``) is that of
its OUTPUT format, the format the result is delivered in.  Everything that takes a format takes a
policy; :class:`~.arith.Arith` reads the three formats from it.

Spelling (the one parser: CLI ``-d``, API ``dtypes=``, baselines, JSON and reports):
``STORAGE[@COMPUTE][+ACCUMULATE]``, each part a format name or alias.

* ``bf16@fp32``: inputs rounded to bfloat16, every operation rounded to float32, the result rounded
  once to bfloat16 at the end;
* ``bf16+fp32``: every operation in bfloat16 except the additions of sums (tree and running sums),
  which round to float32; a sum's result is rounded to the compute format once it is complete
  (as ``torch.sum`` of a bfloat16 tensor does: float32 accumulator, bfloat16 result);
* ``bf16@fp32+fp64``: both.

Defaults: compute = storage, accumulate = compute, output = storage.  A spelling that reduces to a
pure format is that format itself (``bf16@bf16`` is ``bfloat16``).  Canonical names use full names:
``bfloat16@float32``, ``bfloat16+float32``, ``float16@float32+float64``.

Presets (16-bit storage only): ``bf16@autocast`` / ``fp16@autocast`` (torch autocast: the loss ops
``cross_entropy`` / ``nll_loss`` / ``binary_cross_entropy_with_logits`` are on autocast's float32 list on
CPU and CUDA: the kernel runs in float32 on the 16-bit inputs and returns float32) and ``bf16@hf-upcast`` /
``fp16@hf-upcast`` (Hugging Face casts the logits to float32 before the loss).  Both: storage the 16-bit
format, compute and accumulate float32, output float32 (docs/reference/policies.md says where real
autocast differs).

Refused, one line each: an unknown part, an empty part, a compute or accumulate format that is not an
arithmetic format (no fraction bits: float8_e8m0 scales; block formats), accumulation in a format that
does not hold every compute value (``bf16@fp32+bf16``), a preset on anything but float16 / bfloat16 or
with ``+ACCUMULATE``.  A compute format narrower than the storage format (``fp32@bf16``) is allowed:
the stored inputs are then converted to the compute format once, as the code it models would
(``x.to(torch.bfloat16)``), and that conversion's overflow / underflow count as the inputs'.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from .blockscale import BLOCK_FORMATS, BlockFormat, block_format_names
from .formats import _BY_NAME, ALL_FORMATS, EVERY_FORMAT, FORMATS, Format, get_format

__all__ = ["format_or_policy", "chosen", "PRESETS", "policy", "block_policy", "block_of", "contains", "SPELLING",
           "notes"]

SPELLING = "STORAGE[@COMPUTE][+ACCUMULATE] (e.g. bf16@fp32, bf16+fp32, bf16@fp32+fp64, bf16@autocast)"

PRESETS: dict[str, str] = {
    "autocast": "torch autocast: the loss op (cross_entropy, nll_loss, bce_with_logits: autocast's float32 list) "
                "in float32 on the 16-bit inputs, result float32",
    "hf-upcast": "Hugging Face: logits cast to float32 before the loss, everything after in float32, result float32",
}
_PRESET_STORAGE = ("float16", "bfloat16")


def contains(outer: Format, inner: Format) -> bool:
    """Every value of ``inner`` is a value of ``outer`` (at least its precision, max and subnormal reach)."""
    return (inner.precision <= outer.precision and inner.max <= outer.max
            and inner.smallest_subnormal >= outer.smallest_subnormal)


def _block_named(name: str) -> BlockFormat | None:
    return next((b for b in BLOCK_FORMATS.values() if name == b.name or name in b.aliases), None)


def _part(text: str, spec: str, role: str) -> Format:
    name = text.strip()
    if not name:
        raise KeyError(f"policy {spec!r}: the {role} format is missing; a policy is {SPELLING}")
    fmt = _BY_NAME.get(name)
    if fmt is None and _block_named(name) is not None:
        raise KeyError(f"policy {spec!r}: {name} is a block-scaled format; it can only be the storage format "
                       f"(the first part: {name}, {name}@fp32, {name}@bf16+fp32 ...)")
    if fmt is None:
        raise KeyError(f"policy {spec!r}: unknown {role} format {name!r}; formats: {', '.join(FORMATS)}; "
                       f"block formats (storage only): {', '.join(block_format_names())}; a policy is {SPELLING}")
    return fmt


def _arithmetic(fmt: Format, spec: str, role: str) -> None:
    if fmt.fraction_bits < 1 or fmt.scale_only or getattr(fmt, "block", None):
        raise KeyError(f"policy {spec!r}: {fmt.name} cannot be the {role} format (it is a scale or block "
                       "format, not one operations round to)")


def policy(storage: Format, compute: Format | None = None, accumulate: Format | None = None,
           output: Format | None = None, name: str | None = None) -> Format:
    """The policy (storage, compute, accumulate, output), defaults compute = storage, accumulate =
    compute, output = storage; the pure format itself when all four are one format."""
    compute = storage if compute is None else compute
    accumulate = compute if accumulate is None else accumulate
    output = storage if output is None else output
    if storage == compute == accumulate == output:
        return storage
    if name is None:
        name = storage.name + ("" if compute == storage else "@" + compute.name) + (
            "" if accumulate == compute else "+" + accumulate.name)
    made = replace(output, name=name, aliases=(), storage=storage, compute=compute, accumulate=accumulate)
    return _CANONICAL.setdefault(made, made)  # one object per policy, however it was spelled


_CANONICAL: dict[Format, Format] = {}


def block_policy(block: BlockFormat, compute: Format | None = None, accumulate: Format | None = None) -> Format:
    """The policy whose storage is the block format ``block``: inputs quantized per block along their last
    axis (:func:`.blockscale.quantize`), the dequantized values then held in the compute format (default
    float32), operations in ``compute``, sums in ``accumulate`` (default: compute), the result delivered in
    the compute format (a block format cannot hold a single result: its scale is set by a block).  The
    policy's ``storage`` is the compute format (where the quantized values are held) and ``block`` names
    the block format.  Name: ``mxfp4``, ``mxfp4@bfloat16``, ``mxfp4+float64`` (the block format's canonical
    name; ``@float32`` is the default and not spelled)."""
    compute = FORMATS["float32"] if compute is None else compute
    accumulate = compute if accumulate is None else accumulate
    name = block.name + ("" if compute.name == "float32" else "@" + compute.name) + (
        "" if accumulate == compute else "+" + accumulate.name)
    made = replace(compute, name=name, aliases=(), storage=compute, compute=compute, accumulate=accumulate,
                   block=block.name)
    return _CANONICAL.setdefault(made, made)


def block_of(fmt: Format) -> BlockFormat | None:
    """The block format a policy stores its inputs in (None: elementwise storage)."""
    return None if fmt.block is None else BLOCK_FORMATS[fmt.block]


def format_or_policy(spec: str) -> Format:
    """The format or policy ``spec`` names (see the module docstring); KeyError with one line if none.
    Every place a user names a format (``-d``, ``dtypes=``, baseline keys, worker processes) looks it up here."""
    return _parse(str(spec).strip().lower())


@lru_cache(maxsize=None)
def _parse(spec: str) -> Format:
    if "@" not in spec and "+" not in spec:
        block = _block_named(spec)
        if block is not None:
            return block_policy(block)
        try:
            return get_format(spec)  # a pure format (or its KeyError, listing the names)
        except KeyError as e:
            raise KeyError(f"{e.args[0]}; block formats: {', '.join(block_format_names())}") from None
    head, _, acc_text = spec.partition("+")
    storage_text, at, compute_text = head.partition("@")
    if "@" in compute_text or "+" in acc_text or (at and not compute_text.strip() and not acc_text):
        if at and not compute_text.strip():
            raise KeyError(f"policy {spec!r}: the compute format is missing; a policy is {SPELLING}")
        raise KeyError(f"policy {spec!r}: at most one @ and one +; a policy is {SPELLING}")
    block = _block_named(storage_text.strip())
    preset = compute_text.strip() if at else ""
    if block is not None:
        if preset in PRESETS:
            raise KeyError(f"policy {spec!r}: the {preset} preset is for float16 and bfloat16 storage")
        return block_policy(block, *_arithmetic_parts(spec, compute_text if at else None, acc_text,
                                                       FORMATS["float32"]))
    storage = _part(storage_text, spec, "storage")
    if preset in PRESETS:
        if storage.name not in _PRESET_STORAGE:
            raise KeyError(f"policy {spec!r}: the {preset} preset is for float16 and bfloat16 storage")
        if acc_text:
            raise KeyError(f"policy {spec!r}: the {preset} preset fixes the accumulation (float32); drop +{acc_text}")
        f32 = FORMATS["float32"]
        return policy(storage, f32, f32, f32, name=f"{storage.name}@{preset}")
    return policy(storage, *_arithmetic_parts(spec, compute_text if at else None, acc_text, storage))


def _arithmetic_parts(spec: str, compute_text: str | None, acc_text: str, default: Format) -> tuple[Format, Format]:
    """The (compute, accumulate) formats of ``spec``: compute named after @ (else ``default``), accumulate
    after + (else compute); each one operations can round to, and the accumulation holding every compute
    value."""
    compute = default if compute_text is None else _part(compute_text, spec, "compute")
    _arithmetic(compute, spec, "compute")
    accumulate = _part(acc_text, spec, "accumulate") if "+" in spec else compute
    _arithmetic(accumulate, spec, "accumulate")
    if not contains(accumulate, compute):
        raise KeyError(f"policy {spec!r}: accumulating in {accumulate.name} loses values of the compute format "
                       f"{compute.name}; the accumulation format must hold them (e.g. +float32)")
    return compute, accumulate


def notes(formats) -> list[str]:
    """One sentence per policy whose compute format does not hold its storage format (allowed, and said)."""
    return [f"{f.name}: the compute format {f.compute_format.name} does not hold every {f.storage_format.name} input; "
            f"inputs are converted to {f.compute_format.name} once after loading (their overflow or underflow "
            "there counts as the input's: status range)"
            for f in formats if f.is_policy and not contains(f.compute_format, f.storage_format)]


def chosen(name: str, scales: bool = False) -> tuple[Format, ...]:
    """What ``-d NAME`` means (CLI and API alike): ``all`` (:data:`~.formats.ALL_FORMATS`), ``every``
    (:data:`~.formats.EVERY_FORMAT`), or one format or policy (:func:`format_or_policy`).  An unknown name
    is a KeyError, a scale format as the storage (unless ``scales``: the ``formats`` command lists them) a
    ValueError, each with a one-line message."""
    key = str(name).strip().lower()
    if key == "all":
        return ALL_FORMATS
    if key == "every":
        return EVERY_FORMAT
    fmt = format_or_policy(key)
    storage = fmt.storage_format
    if storage.scale_only and not scales:
        raise ValueError(f"{storage.name} is an unsigned scale format (the block scale of MX / NV formats: no "
                         f"negative values{', no zero' if not storage.has_zero else ''}); an experiment cannot "
                         "compute in it (-d every lists the formats that can)")
    return (fmt,)
