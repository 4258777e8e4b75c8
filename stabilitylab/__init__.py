"""stabilitylab: numerical (in)stability of ML loss formulas, and audits of real loss code.

Python API (imported on first use, so ``python -m stabilitylab`` stays light)::

    import stabilitylab
    result = stabilitylab.audit("torch.cross_entropy", dtypes=["bfloat16"])
    result.resembles, result.thresholds, result.witnesses
    result.to_json(); result.to_pytest("tests/test_loss_stability.py")
    stabilitylab.compare(["softmax_ce"]).to_markdown()
    stabilitylab.thresholds("likelihood", dtypes="float32").rows
    with stabilitylab.trace(dtype="bf16") as t: loss = model(x); loss.backward()   # then t.findings

See :mod:`stabilitylab.api` for the parameters.
"""

__version__ = "0.1.0"

__all__ = ["audit", "compare", "thresholds", "train", "trace", "adapters_table", "AuditResult", "CompareResult",
           "ThresholdsResult", "TrainResult", "TraceResult", "AuditError", "InputError"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'stabilitylab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
