"""Two loss functions to audit, as in the docs' audit guide:

    stabilitylab audit docs/examples/losses.py:my_ce -e softmax_ce -d fp16 -d fp32
    stabilitylab audit docs/examples/losses.py:my_bce -e binary_ce -d bf16

Each receives numpy arrays in the format's own dtype and returns one loss per row.
"""

import numpy as np


def my_ce(logits, labels):
    """Softmax cross-entropy the textbook way: -log(exp(x_y) / sum exp(x)), no max shift."""
    e = np.exp(logits)
    p = e / e.sum(axis=-1, keepdims=True)
    return -np.log(p[np.arange(len(labels)), labels])


def my_bce(logits, labels):
    """Binary cross-entropy through the sigmoid, summed over the K outputs of each row."""
    p = 1 / (1 + np.exp(-logits))
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).sum(axis=-1)
