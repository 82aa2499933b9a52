"""The edgepipe model zoo: small residual attention CNNs sized for edge devices.

All networks share one backbone: a 3x3 stem, then three stages of one residual basic block each,
every stage halving the resolution (32x32 input -> 4x4 features), global pooling and a linear
classifier. The networks differ only in the attention: inside every block (SE, ECA, CBAM,
coordinate, gated), as the pooling head (softmax feature attention), or replacing the last
stage's second conv (multi-head self-attention, BoTNet style).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import AttentionPool, create_attention
from .registry import register_model

STEM_WIDTH = 16
WIDTHS = (32, 64, 128)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


def _downsampled(size: int, stride: int) -> int:
    """Output size of a 3x3, padding 1 conv with this stride."""
    return (size - 1) // stride + 1


class BasicBlock(nn.Module):
    """conv-bn-relu, conv-bn (or MHSA-bn), attention, + shortcut, relu."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        attention: str = "none",
        attn_kw: dict | None = None,
        mhsa_feat_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride)
        self.act = nn.ReLU(inplace=True)
        if mhsa_feat_size is not None:
            # BoTNet: self-attention takes the place of the block's spatial conv.
            self.conv2 = nn.Sequential(create_attention("mhsa", cout, feat_size=mhsa_feat_size), nn.BatchNorm2d(cout))
            self.attn = nn.Identity()
        else:
            self.conv2 = _conv_bn(cout, cout)
            self.attn = create_attention(attention, cout, **(attn_kw or {}))
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attn(self.conv2(self.act(self.conv1(x))))
        return self.act(out + self.shortcut(x))


class AttentionResNet(nn.Module):
    """The shared edgepipe backbone; ``attention`` picks the layer inside every block."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 32,
        attention: str = "none",
        attn_kw: dict | None = None,
        head: str = "mean",
        mhsa_last: bool = False,
        widths: tuple[int, ...] = WIDTHS,
        stem_width: int = STEM_WIDTH,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(in_chans, stem_width), nn.ReLU(inplace=True))
        blocks, cin, size = [], stem_width, img_size
        for i, cout in enumerate(widths):
            size = _downsampled(size, 2)
            mhsa = (size, size) if mhsa_last and i == len(widths) - 1 else None
            blocks.append(BasicBlock(cin, cout, 2, attention, attn_kw, mhsa_feat_size=mhsa))
            cin = cout
        self.stages = nn.Sequential(*blocks)
        self.pool = AttentionPool(cin) if head == "attention" else None
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if self.pool is not None:
            self.pool.reset_parameters()  # undo the conv init above: the head starts as mean pooling
        # Zero the last BN of each residual branch: blocks start as identity, which trains faster.
        for block in self.stages:
            nn.init.zeros_(block.conv2[-1].weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map before pooling, shape (B, C, H/8, W/8)."""
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.forward_features(x)
        pooled = self.pool(f) if self.pool is not None else f.mean((2, 3))
        return self.fc(self.drop(pooled))


# The default training recipe every zoo model reaches its target with (see docs/zoo.md).
RECIPE = {"default_epochs": 20, "default_lr": 3e-3}


def _factory(**backbone):
    """A zoo entry: AttentionResNet with ``backbone`` fixed; the caller's keywords (num_classes, ...) on top."""
    return lambda **kw: AttentionResNet(**backbone, **kw)


# name -> (attention kind, description, AttentionResNet arguments)
ZOO = {
    "se_resnet": ("se", "residual CNN with squeeze-and-excitation in every block", {"attention": "se"}),
    "eca_resnet": ("eca", "residual CNN with efficient channel attention in every block", {"attention": "eca"}),
    "cbam_resnet": ("cbam", "residual CNN with CBAM (channel + spatial gates) in every block", {"attention": "cbam"}),
    "coord_resnet": ("coord", "residual CNN with coordinate attention in every block", {"attention": "coord"}),
    "gated_cnn": ("gate", "residual CNN with a gated 1x1-conv attention map in every block", {"attention": "gate"}),
    "attnpool_cnn": (
        "softmax-pool",
        "residual CNN with a softmax feature-attention pooling head",
        {"head": "attention"},
    ),
    "bot_net": ("mhsa", "residual CNN with multi-head self-attention in the last stage (BoTNet)", {"mhsa_last": True}),
}
for _name, (_attention, _description, _backbone) in ZOO.items():
    register_model(_name, attention=_attention, description=_description, **RECIPE)(_factory(**_backbone))
