"""Attention layers shared by the edgepipe model zoo.

Every layer is built from plain ops that the TorchScript ONNX exporter (opset 17) turns into a
small, static graph that TensorRT parses: global pooling is ``mean``/``amax`` over the spatial
axes rather than adaptive pooling modules, reshapes keep the batch slot as ``-1`` so the exported
batch stays dynamic, and every gate is a real ``torch.sigmoid``/``torch.softmax`` so that it shows
up as an ONNX Sigmoid/Softmax node (the INT8 stage keeps those in higher precision by op type).

Gated layers expose ``attention_map(x)``, returning the gate tensor(s) in (0, 1), so that users
and tests can inspect what the layer attends to.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _hidden(channels: int, reduction: int, min_hidden: int = 8) -> int:
    """Width of a bottleneck MLP: channels // reduction, but never uselessly narrow."""
    return max(min_hidden, channels // reduction)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: a per-channel sigmoid gate from globally pooled features."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = _hidden(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Channel gate, shape (B, C, 1, 1)."""
        s = x.mean((2, 3), keepdim=True)
        return torch.sigmoid(self.fc2(self.act(self.fc1(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention_map(x)


class ECA(nn.Module):
    """Efficient channel attention: a 1-D conv across pooled channels, no dimensionality reduction."""

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: int = 2, beta: int = 1):
        super().__init__()
        if kernel_size is None:
            # Adaptive kernel size from the ECA paper: odd, growing with log2(channels).
            t = int(abs((math.log2(channels) + beta) / gamma))
            kernel_size = max(3, t if t % 2 else t + 1)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Channel gate, shape (B, C, 1, 1)."""
        s = x.mean((2, 3)).unsqueeze(1)  # (B, 1, C): channels become the 1-D sequence
        g = torch.sigmoid(self.conv(s))
        return g.transpose(1, 2).unsqueeze(-1)  # (B, C, 1, 1) without a batch-sized reshape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention_map(x)


class CBAM(nn.Module):
    """Convolutional block attention: a channel gate (avg+max MLP), then a spatial gate (7x7 conv)."""

    def __init__(self, channels: int, reduction: int = 4, spatial_kernel: int = 7):
        super().__init__()
        hidden = _hidden(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2, bias=False)

    def _mlp(self, s: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(s)))

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """Channel gate, shape (B, C, 1, 1)."""
        avg = self._mlp(x.mean((2, 3), keepdim=True))
        mx = self._mlp(x.amax((2, 3), keepdim=True))
        return torch.sigmoid(avg + mx)

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial gate, shape (B, 1, H, W)."""
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial(pooled))

    def attention_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(channel gate, spatial gate of the channel-gated features)."""
        c = self.channel_gate(x)
        return c, self.spatial_gate(x * c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_gate(x)
        return x * self.spatial_gate(x)


class CoordAttention(nn.Module):
    """Coordinate attention: channel gates that keep position along H and along W separately."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = _hidden(channels, reduction)
        self.conv1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        # ReLU rather than the paper's h-swish: same accuracy at this size, simplest for INT8.
        self.act = nn.ReLU(inplace=True)
        self.conv_h = nn.Conv2d(hidden, channels, 1)
        self.conv_w = nn.Conv2d(hidden, channels, 1)

    def attention_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate along H, shape (B, C, H, 1); gate along W, shape (B, C, 1, W))."""
        h, w = x.shape[2], x.shape[3]
        pool_h = x.mean(3, keepdim=True)  # (B, C, H, 1)
        pool_w = x.mean(2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        y = self.act(self.bn(self.conv1(torch.cat([pool_h, pool_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        gate_h = torch.sigmoid(self.conv_h(y_h))
        gate_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))
        return gate_h, gate_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_h, gate_w = self.attention_map(x)
        return x * gate_h * gate_w


class GateAttention(nn.Module):
    """Gated convolutional attention: 1x1 convs produce a sigmoid map that multiplies the features.

    ``map_channels=0`` (the default) gives one gate per channel and position; ``map_channels=1``
    gives one spatial map shared by all channels.
    """

    def __init__(self, channels: int, reduction: int = 4, map_channels: int = 0):
        super().__init__()
        hidden = _hidden(channels, reduction)
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(hidden, map_channels or channels, 1)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Gate map, shape (B, C or 1, H, W)."""
        return torch.sigmoid(self.conv2(self.act(self.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention_map(x)


class MHSA(nn.Module):
    """Spatial multi-head self-attention over feature-map positions (BoTNet style).

    q, k, v are 1x1 convs; logits are q.k / sqrt(d_k) plus a content-position term q.pos, with a
    softmax over positions. ``pos="abs"`` learns one embedding per row and one per column
    (``feat_size`` = (H, W) of the feature map, fixed when the model is built: the exported graph
    has a static spatial size, only the batch is dynamic). ``pos="none"`` drops position.
    """

    def __init__(
        self, channels: int, feat_size: int | tuple[int, int] | None = None, num_heads: int = 4, pos: str = "abs"
    ):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.dk = channels // num_heads
        self.scale = self.dk**-0.5
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
        if pos == "abs":
            if feat_size is None:
                raise ValueError("mhsa with pos='abs' needs feat_size=(H, W) of its feature map")
            fh, fw = (feat_size, feat_size) if isinstance(feat_size, int) else tuple(feat_size)
            self.pos_h = nn.Parameter(torch.randn(num_heads, self.dk, fh, 1) * self.dk**-0.5)
            self.pos_w = nn.Parameter(torch.randn(num_heads, self.dk, 1, fw) * self.dk**-0.5)
        elif pos != "none":
            raise ValueError(f"unknown position embedding {pos!r}; use 'abs' or 'none'")
        self.pos = pos

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, heads, d_k, H*W); the batch slot stays -1 so export keeps it dynamic."""
        return t.reshape(-1, self.num_heads, self.dk, t.shape[2] * t.shape[3])

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax weights, shape (B, heads, HW queries, HW keys); each row sums to 1."""
        q, k, _ = self.qkv(x).chunk(3, dim=1)
        return self._weights(self._heads(q), self._heads(k))

    def _weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if self.pos == "abs":
            pos = (self.pos_h + self.pos_w).flatten(2)  # (heads, d_k, HW)
            k = k + pos  # q.k + q.pos in one matmul
        logits = torch.matmul(q.transpose(2, 3), k) * self.scale  # (B, heads, HWq, HWk)
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        q, k, v = self.qkv(x).chunk(3, dim=1)
        attn = self._weights(self._heads(q), self._heads(k))
        out = torch.matmul(self._heads(v), attn.transpose(2, 3))  # (B, heads, d_k, HWq)
        return out.reshape(-1, self.num_heads * self.dk, h, w)


class AttentionPool(nn.Module):
    """Softmax-normalized feature attention as a pooling head.

    A 1x1 conv scores every feature position, a softmax over positions turns the scores into
    weights, and the output is the weighted sum of the features: (B, C, H, W) -> (B, C).
    With ``num_heads`` > 1 each head pools its own group of channels.
    """

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.score = nn.Conv2d(channels, num_heads, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Start as global average pooling (uniform weights) and learn where to look from there.

        A random start lets the softmax lock onto a few positions early in training, which cost
        about 2 points of accuracy on the digits dataset.
        """
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Weights over positions, shape (B, heads, H*W); each row sums to 1."""
        return torch.softmax(self.score(x).flatten(2), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.attention_map(x)  # (B, heads, HW)
        if self.num_heads == 1:
            # No reshape at all: the exported graph is Conv, Flatten, Softmax, Mul, ReduceSum.
            return (x.flatten(2) * weights).sum(-1)
        feats = x.flatten(2).unflatten(1, (self.num_heads, -1))  # (B, heads, C/heads, HW)
        return (feats * weights.unsqueeze(2)).sum(-1).flatten(1)


_FACTORIES = {
    "se": SqueezeExcite,
    "eca": ECA,
    "cbam": CBAM,
    "coord": CoordAttention,
    "gate": GateAttention,
    "mhsa": MHSA,
    "none": None,
    "identity": None,
}

ATTENTION_KINDS = tuple(_FACTORIES)


def create_attention(kind: str, channels: int, **kw) -> nn.Module:
    """Build the attention layer ``kind`` for ``channels`` features; keyword args go to the layer.

    ``none``/``identity`` (and ``None``) give ``nn.Identity``. ``mhsa`` needs ``feat_size``.
    """
    key = "none" if kind is None else str(kind).lower()
    if key not in _FACTORIES:
        raise ValueError(f"unknown attention kind {kind!r}; choose one of {', '.join(ATTENTION_KINDS)}")
    cls = _FACTORIES[key]
    return nn.Identity() if cls is None else cls(channels, **kw)
