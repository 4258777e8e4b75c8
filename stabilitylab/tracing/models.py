"""Small deterministic PyTorch models for ``stabilitylab trace``: tests, the benchmark and the docs use them.

:func:`build_lm` is a 2-layer decoder-only transformer language model (GPT-2 layout, pre-norm):

    h_0 = E[t] + P[pos]                                       token + learned position embedding
    h'  = h + W_o attn(LN_1(h))       attn = softmax(mask(Q K^T / sqrt(d_head))) V, 4 heads, causal
    h'' = h' + W_2 GELU(W_1 LN_2(h'))                          feed-forward, width 4 d_model
    logits = W_head LN_f(h_L)                                  untied output head (its own weights)
    loss = cross_entropy(logits[:, :-1], t[:, 1:])             mean over batch x sequence, in nats

vocabulary 8192, d_model 128, sequence 128, batch 4 (the sizes of issue #21).  The causal mask is written with
``masked_fill(mask, -inf)`` before the softmax: an intended ``-inf`` that a tracer must let through.  The
attention scores and the softmax are modules of their own (``blocks.0.attn.scores``, ``blocks.0.attn.softmax``)
so that forward hooks and module paths see them.

Every ``build_*`` function takes no argument (a ``TARGET`` of ``stabilitylab trace``, e.g.
``stabilitylab.tracing.models:build_lm``) and returns ``(model, batch)``: ``model(batch)`` is the scalar loss,
``batch`` one int64 tensor of token ids of shape (batch, sequence + 1) (the inputs are its first ``sequence``
columns, the targets the last).  Weights and tokens come from a fixed seed inside
``torch.random.fork_rng``, so building twice gives the same tensors and the caller's random state is untouched.
The model is float32 on the CPU; ``model.to(torch.bfloat16)`` runs it natively in bfloat16 (the loss then
is a bfloat16 scalar).

:func:`build_lm_nan` is the same model with a fault that turns the bfloat16 loss NaN while float32 is fine:
its layer norms compute the variance in one pass, ``var = mean(x^2) - mean(x)^2``, and its embeddings carry
a constant offset (every coordinate of ``E`` and ``P`` shifted by ``OFFSET`` = 4, so ``h_0 ~ 8 +- 0.03``),
the way a residual stream with a large common component looks.  Both means are about 64; bfloat16 keeps 8
significant bits, so each rounds with a spacing of 0.25 to 0.5, far above the true variance (~10^-3): the
difference cancels to 0 or to a negative number, and ``rsqrt(var + 1e-5)`` of a negative number is NaN.
:func:`build_lm` (two-pass ``nn.LayerNorm``, no offset) is the rewrite.  The docs' guide
(docs/guides/trace.md) walks from one to the other.

torch is imported when a model is built; without it: ImportError naming the ``torch`` extra.
"""

from __future__ import annotations

import math

__all__ = ["VOCAB", "D_MODEL", "HEADS", "LAYERS", "SEQUENCE", "BATCH", "SEED", "OFFSET",
           "build_lm", "build_lm_nan", "build"]

VOCAB = 8192
D_MODEL = 128
HEADS = 4
LAYERS = 2
SEQUENCE = 128
BATCH = 4
SEED = 0
OFFSET = 4.0  # build_lm_nan: added to every coordinate of the token and position embeddings
INIT_STD = 0.02  # GPT-2's initialisation of every weight matrix and embedding


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("stabilitylab.tracing.models needs PyTorch: pip install 'stabilitylab[torch]'") from None
    return torch


def _classes():
    """The nn.Module classes (defined once torch is imported)."""
    torch = _torch()
    nn = torch.nn
    F = nn.functional

    class OnePassLayerNorm(nn.Module):
        """Layer norm with the one-pass variance ``mean(x^2) - mean(x)^2`` (the fault of build_lm_nan)."""

        def __init__(self, d: int, eps: float = 1e-5):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))
            self.bias = nn.Parameter(torch.zeros(d))
            self.eps = eps

        def forward(self, x):
            mean = x.mean(-1, keepdim=True)
            var = (x * x).mean(-1, keepdim=True) - mean * mean
            return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias

    class Scores(nn.Module):
        """Causal attention scores: ``masked_fill(Q K^T / sqrt(d_head), future, -inf)``."""

        def forward(self, q, k):
            s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
            t = s.shape[-1]
            future = torch.ones(t, t, dtype=torch.bool, device=s.device).triu(1)
            return s.masked_fill(future, float("-inf"))

    class Attention(nn.Module):
        def __init__(self, d: int, heads: int):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(d, 3 * d)
            self.scores = Scores()
            self.softmax = nn.Softmax(dim=-1)
            self.out = nn.Linear(d, d)

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            p = self.softmax(self.scores(q, k))
            return self.out((p @ v).transpose(1, 2).reshape(b, t, d))

    class MLP(nn.Module):
        def __init__(self, d: int):
            super().__init__()
            self.up = nn.Linear(d, 4 * d)
            self.gelu = nn.GELU()
            self.down = nn.Linear(4 * d, d)

        def forward(self, x):
            return self.down(self.gelu(self.up(x)))

    class Block(nn.Module):
        def __init__(self, d: int, heads: int, norm):
            super().__init__()
            self.ln1 = norm(d)
            self.attn = Attention(d, heads)
            self.ln2 = norm(d)
            self.mlp = MLP(d)

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class LM(nn.Module):
        """``forward(tokens)``: mean next-token cross-entropy (nats) of tokens (batch, sequence + 1)."""

        def __init__(self, vocab: int, d: int, heads: int, layers: int, sequence: int, norm):
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.pos = nn.Embedding(sequence, d)
            self.blocks = nn.ModuleList(Block(d, heads, norm) for _ in range(layers))
            self.ln_f = norm(d)
            self.head = nn.Linear(d, vocab, bias=False)

        def logits(self, tokens):
            t = tokens.shape[1]
            h = self.embed(tokens) + self.pos(torch.arange(t, device=tokens.device))
            for block in self.blocks:
                h = block(h)
            return self.head(self.ln_f(h))

        def forward(self, tokens):
            logits = self.logits(tokens[:, :-1])
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    return LM, OnePassLayerNorm


def _build(one_pass: bool, offset: float, seed: int = SEED):
    torch = _torch()
    LM, OnePassLayerNorm = _classes()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        norm = OnePassLayerNorm if one_pass else torch.nn.LayerNorm
        model = LM(VOCAB, D_MODEL, HEADS, LAYERS, SEQUENCE, norm)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif p.ndim >= 2:
                    p.normal_(0.0, INIT_STD)
            model.embed.weight.add_(offset)
            model.pos.weight.add_(offset)
        batch = torch.randint(0, VOCAB, (BATCH, SEQUENCE + 1))
    return model, batch


def build_lm():
    """The healthy LM (two-pass ``nn.LayerNorm``): ``(model, batch)``, float32, seed 0."""
    return _build(one_pass=False, offset=0.0)


def build_lm_nan():
    """The LM whose bfloat16 loss is NaN (one-pass variance, embeddings offset by ``OFFSET``): ``(model, batch)``."""
    return _build(one_pass=True, offset=OFFSET)


build = build_lm  # ``stabilitylab trace stabilitylab.tracing.models:build``
