"""Why an op lost a value and what to do: (op, cause, pattern) -> the textbook rewrite and the command that
reproduces the formula in isolation.

The catalogue is data (:data:`CATALOGUE`); :func:`lookup` picks the first entry whose ops, causes and
pattern match a finding, and :func:`command` fills in the format.  The docs' table
(``docs/reference/trace.md``) is generated from the same data (``tests/test_trace_docs.py`` checks it).

Patterns (read off the finding, :func:`pattern_of`):

``rounded_constant``  an input of the op descends (at most three pointwise ops back) from a ``clamp`` /
                      ``add`` / ``sub`` whose constant rounds to 0 or 1 in the format (``1 - 1e-6`` is 1 in
                      bfloat16);
``cancellation``      an ``add`` / ``sub`` whose offending outputs are much smaller than its operands
                      (|a + b| < max(|a|, |b|) / 4, in the twin);
``accumulation``      an ``add`` whose offending operands have the same sign (a running sum that stagnates:
                      the addend is below half an ulp of the sum);
``large_argument``    ``sin`` / ``cos`` of arguments beyond 2 pi (a rounded phase);
``out_of_domain``     a NaN that float64 also gives on the same inputs (an input outside the op's domain);
``subnormal``         an inaccurate result whose worst elements (the samples) are below the smallest normal;
``""``                anything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..numerics.formats import Format

__all__ = ["Rewrite", "CATALOGUE", "lookup", "command", "pattern_of", "table_markdown"]


@dataclass(frozen=True)
class Rewrite:
    key: str
    ops: tuple[str, ...]  # short aten names ("exp"); () matches any op
    causes: tuple[str, ...]
    pattern: str | None  # None matches any pattern
    why: str
    rewrite: str
    experiment: str | None  # the experiment that shows the formula in isolation (None: none does yet)
    command: str | None  # with {fmt}


CATALOGUE: tuple[Rewrite, ...] = (
    Rewrite("epsilon_not_representable", (), ("underflow", "overflow", "nan", "inaccurate"), "rounded_constant",
            "a clamp bound or epsilon that the format rounds to 0 or 1, so the clamp no longer keeps the value "
            "away from the pole (1 - 1e-6 == 1 in bfloat16)",
            "choose an epsilon the format holds (>= its eps / 2 next to 1), or compute the log term from logits "
            "(log1p(-sigmoid(z)) = -softplus(z))",
            "epsilon_clip", "stabilitylab compare -e epsilon_clip -d {fmt}"),
    Rewrite("exp_overflow", ("exp", "exp2", "pow"), ("overflow",), None,
            "exp of a value above ln(max) of the format (11.09 in float16, 88.72 in bfloat16)",
            "subtract the row maximum before exp (max-shift), or use log-sum-exp / torch.softmax / log_softmax",
            "softmax_ce", "stabilitylab compare -e softmax_ce -d {fmt}"),
    Rewrite("log_of_rounded_probability", ("log", "log1p", "log2", "log10", "xlogy", "_log_softmax"),
            ("underflow", "overflow", "inaccurate", "nan"), None,
            "log of a probability that rounded to 0 or 1 (or log1p(-p) with p rounded to 1)",
            "take the log from logits: log_softmax, the log1p form, BCE from logits (binary_cross_entropy_with_logits)",
            "binary_ce", "stabilitylab compare -e binary_ce -d {fmt}"),
    Rewrite("cancellation", ("sub", "rsub", "add", "add_", "sub_"), ("inaccurate",), "cancellation",
            "cancellation: the difference of two nearly equal rounded values (p_y - 1 with p_y rounded to 1; "
            "a one-pass variance mean(x^2) - mean(x)^2)",
            "compute the difference in float32 (from logits: softmax - onehot in float32; a variance: two passes, "
            "mean((x - mean(x))^2))",
            "gradient", "stabilitylab compare -e gradient -d {fmt}"),
    Rewrite("low_precision_sum", ("add", "add_", "sum", "cumsum", "mean"), ("inaccurate",), None,
            "a sum accumulated in the low format: once the sum is large, each addend is below half an ulp of it "
            "and is lost (the sum stagnates)",
            "accumulate in float32 (sum(dtype=torch.float32), a float32 accumulator), or sum pairwise",
            "accumulation", "stabilitylab compare -e accumulation -d {fmt}"),
    Rewrite("gradual_underflow", (), ("inaccurate",), "subnormal",
            "values below the format's smallest normal (6.1e-5 in float16) keep only a few significant bits: "
            "typical of float16 gradients without loss scaling",
            "scale the loss (torch.amp.GradScaler), or keep these values in bfloat16 / float32",
            "gradient", "stabilitylab compare -e gradient -d {fmt}"),
    Rewrite("large_phase", ("sin", "cos"), ("inaccurate",), None,
            "sin / cos of a phase computed in the low format: at large positions position * freq has an ulp of a "
            "radian or more (RoPE)",
            "compute the phases position * freq (and their sin / cos) in float32, then cast",
            None, None),
    Rewrite("past_max", (), ("overflow",), None,
            "a result beyond the format's largest finite value (65504 in float16): matmul, residual or activation",
            "keep this op in bfloat16 or float32 (autocast policy), clamp, or rescale (normalise the inputs, scale "
            "the weights down)",
            None, "stabilitylab formats -d {fmt}"),
    Rewrite("underflow", (), ("underflow",), None,
            "a result below the format's smallest subnormal flushed to 0 where the value mattered",
            "compute this op in float32, or rescale (loss scaling for gradients)",
            "gradient", "stabilitylab compare -e gradient -d {fmt}"),
    Rewrite("out_of_domain", (), ("nan",), "out_of_domain",
            "the input left the op's domain because of earlier rounding (a variance mean(x^2) - mean(x)^2 that "
            "cancelled to a negative number, then sqrt / rsqrt): float64 on the same input gives the same NaN, "
            "the op is not at fault",
            "compute the input stably where it was lost (the finding before this one: a two-pass variance, "
            "torch.nn.LayerNorm, float32), or clamp it into the domain",
            None, None),
    Rewrite("invalid", (), ("nan",), None,
            "an invalid operation (0/0, inf - inf, 0 * inf) the float64 reference does not do",
            "find the zero or infinity among the inputs (samples) and guard it; compute this op in float32",
            None, None),
    Rewrite("inaccurate", (), ("inaccurate",), None,
            "more than half of the format's significand bits lost (relative error above sqrt(u))",
            "compute this op in float32 (a precision policy STORAGE@fp32)",
            None, None),
)


def pattern_of(op: str, cause: str, origin: dict | None, samples: list, tiny: float = 0.0) -> str:
    """The pattern of a finding (see the module docstring), from its op's short name, cause, origin and samples
    (``tiny``: the format's smallest normal)."""
    if origin is not None:
        return "rounded_constant"
    if cause == "inaccurate" and samples and all(isinstance(s.get("twin"), float) and abs(s["twin"]) < tiny
                                                 for s in samples):
        return "subnormal"  # the worst elements are below the smallest normal: few bits left
    if cause == "nan" and samples and all(isinstance(s.get("local_reference"), float) and
                                          s["local_reference"] != s["local_reference"] for s in samples):
        return "out_of_domain"  # NaN in float64 on the same inputs too: an input outside the domain
    if op in ("add", "sub", "rsub", "add_", "sub_") and cause == "inaccurate" and samples:
        cancels = sum(1 for s in samples if len(s.get("inputs", ())) == 2 and
                      abs(s["twin"]) < max(abs(s["inputs"][0]), abs(s["inputs"][1])) / 4)
        if cancels * 2 > len(samples) or op in ("sub", "rsub", "sub_") and cancels:
            return "cancellation"
        return "accumulation"
    if op in ("sin", "cos") and samples and any(abs(x) > 6.3 for s in samples for x in s.get("inputs", ())):
        return "large_argument"
    return ""


def lookup(op: str, cause: str, pattern: str) -> Rewrite:
    """The first catalogue entry for the op's short name, the cause and the pattern."""
    for entry in CATALOGUE:
        if entry.ops and op not in entry.ops:
            continue
        if cause not in entry.causes:
            continue
        if entry.pattern is not None and entry.pattern != pattern:
            continue
        if entry.key == "low_precision_sum" and op in ("add", "add_") and pattern != "accumulation":
            continue
        return entry
    raise LookupError(f"no catalogue entry for {op} {cause}")  # unreachable: the generic entries match


def command(entry: Rewrite, fmt: Format) -> str | None:
    """The command that reproduces the entry's formula in the format (``None``: no experiment does yet)."""
    if entry.command is None:
        return None
    return entry.command.format(fmt=fmt.name)  # a policy's name is its -d spelling (bfloat16@float32)


def table_markdown() -> str:
    """The catalogue as a markdown table (the reference page's)."""
    lines = ["| entry | ops | causes | pattern | why | rewrite | reproduce |", "|---|---|---|---|---|---|---|"]
    for e in CATALOGUE:
        ops = ", ".join(f"`{o}`" for o in e.ops) or "any"
        reproduce = f"`{e.command.format(fmt='FMT')}`" if e.command else "none yet"
        lines.append(f"| `{e.key}` | {ops} | {', '.join(e.causes)} | {e.pattern or 'any'} | {e.why} | {e.rewrite} "
                     f"| {reproduce} |")
    return "\n".join(lines) + "\n"
