"""Small PyTorch models, each with one planted numerical fault (and a healthy one), for the trace tests.
Each builder returns (model, batch); the model's forward returns a scalar loss."""

import torch


class NaiveAttention(torch.nn.Module):
    """softmax(q k^T / sqrt(d)) with a naive exp: scores on the diagonal are c**2 / sqrt(d)."""

    def __init__(self):
        super().__init__()
        self.d = 4

    def forward(self, q):
        scores = q @ q.transpose(-1, -2) / self.d ** 0.5
        e = torch.exp(scores)
        return (e / e.sum(-1, keepdim=True)).sum()


class WithAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = NaiveAttention()

    def forward(self, x):
        return self.attn(x)


def attention(score: float):
    c = (score * 2.0) ** 0.5  # diagonal score = c**2 / sqrt(4)
    x = torch.eye(4).unsqueeze(0) * c
    return WithAttention(), x


def attention_40():
    return attention(40.0)


def attention_100():
    return attention(100.0)


class ClampedBinary(torch.nn.Module):
    """p = sigmoid(z) clamped to [1e-6, 1 - 1e-6], loss -log(1 - p) for label 0."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(2, 1)
        with torch.no_grad():
            self.head.weight.fill_(10.0)
            self.head.bias.zero_()

    def forward(self, x):
        p = torch.sigmoid(self.head(x)).clamp(min=1e-6, max=1 - 1e-6)
        return -torch.log1p(-p).mean()


class Binary(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.loss = ClampedBinary()

    def forward(self, x):
        return self.loss(x)


def clamp_log1p():
    return Binary(), torch.ones(3, 2)  # z = 20: sigmoid(z) = 1 - 2e-9


class FeedForward(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 16)
        self.fc2 = torch.nn.Linear(16, 4)
        with torch.no_grad():
            self.fc1.weight.fill_(10.0)
            self.fc1.bias.zero_()
            self.fc2.weight.fill_(60.0)
            self.fc2.bias.zero_()

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class FFModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ff = FeedForward()

    def forward(self, x):
        return self.ff(x).mean()


def feed_forward():
    return FFModel(), torch.full((2, 4), 2.0)  # fc1: 80 each; fc2: 16 * 80 * 60 = 76800 > 65504


class Accumulator(torch.nn.Module):
    """A running sum in the model's own format: acc = acc + x[:, i]."""

    def forward(self, x):
        acc = torch.zeros(x.shape[0], dtype=x.dtype)
        for i in range(x.shape[1]):
            acc = acc + x[:, i]
        return acc.mean()


class SumModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.total = Accumulator()

    def forward(self, x):
        return self.total(x)


def running_sum():
    return SumModel(), torch.ones(2, 300)


class Rope(torch.nn.Module):
    """Rotary phases position * freq computed in the model's format at positions 1024..1087."""

    def __init__(self, dim: int = 8, start: int = 1024):
        super().__init__()
        self.start = start
        self.register_buffer("freq", 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim))

    def forward(self, x):
        pos = torch.arange(self.start, self.start + x.shape[0], dtype=x.dtype)
        phases = pos[:, None] * self.freq[None, :]
        x1, x2 = x[:, 0::2], x[:, 1::2]
        return (x1 * torch.cos(phases) - x2 * torch.sin(phases)).sum()


class RopeModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rope = Rope()

    def forward(self, x):
        return self.rope(x)


def rope():
    torch.manual_seed(0)
    return RopeModel(), torch.randn(64, 8)


class ManualGradient(torch.nn.Module):
    """p_y - 1: the softmax cross-entropy gradient at the label, by hand."""

    def forward(self, logits):
        p = torch.softmax(logits, dim=-1)
        g = p[:, 0] - 1
        return (g * g).sum()


class GradModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.grad = ManualGradient()

    def forward(self, x):
        return self.grad(x)


def p_minus_one():
    logits = torch.zeros(8, 4)
    logits[:, 0] = 8.0  # p_y = 0.998994
    return GradModel(), logits


class Healthy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(16)
        self.fc1 = torch.nn.Linear(16, 32)
        self.fc2 = torch.nn.Linear(32, 5)

    def forward(self, x, y):
        h = self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))
        return torch.nn.functional.cross_entropy(h, y)


def healthy():
    torch.manual_seed(0)
    return Healthy(), (torch.randn(8, 16), torch.randint(0, 5, (8,)))
