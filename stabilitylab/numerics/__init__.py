"""Floor 1, numerics: what a floating-point format computes.

Formats (constants from ``finfo``), correct rounding (``round_bits``), correctly rounded elementary
functions (``crmath``, ``doubledouble``), the two arithmetics that experiments are written against
(``arith.Arith`` on points, ``interval.IntervalArith`` on ranges), running sums, and exact references
(``reference``).  Imports numpy, ml_dtypes and mpmath only: nothing else of stabilitylab.
"""
