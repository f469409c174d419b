"""A lean 3D U-Net for labelling the hippocampus (0 background, 1 anterior, 2 posterior).

Why this shape:

* The crops are tiny (about 40 x 55 x 40 voxels), so three down-sampling steps already give the
  deepest level a receptive field covering the whole hippocampus. A fourth level only costs time.
* Inference must run in well under 150 ms on two CPU cores. Almost all of the cost of a U-Net sits
  in the full-resolution convolutions, so the first level is narrow (8-16 channels) and the width
  doubles per level, where voxels are 8x fewer.
* BatchNorm (not InstanceNorm) is used so that, at export, every norm folds into the preceding
  convolution (:func:`fuse_batchnorm`): inference is then a plain chain of conv + LeakyReLU.
* Optional deep-supervision heads on the two coarser decoder levels give the deep layers a direct
  gradient; they are dropped at inference (``forward`` returns only the full-resolution logits in
  eval mode).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture hyper-parameters; stored in the weights JSON so a file always rebuilds."""

    in_channels: int = 1
    num_classes: int = 3
    channels: tuple[int, ...] = (12, 24, 48, 96)
    deep_supervision: bool = True

    @property
    def multiple(self) -> int:
        """Spatial sizes must be a multiple of this (one halving per level below the top)."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> UNetConfig:
        return cls(
            in_channels=int(d["in_channels"]),  # type: ignore[arg-type]
            num_classes=int(d["num_classes"]),  # type: ignore[arg-type]
            channels=tuple(int(c) for c in d["channels"]),  # type: ignore[union-attr]
            deep_supervision=bool(d.get("deep_supervision", False)),
        )


class ConvBlock(nn.Sequential):
    """conv3x3x3 -> BN -> LeakyReLU, twice; the first conv may stride 2 to down-sample."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet3D(nn.Module):
    """Encoder with strided-conv down-sampling, transposed-conv up-sampling, skip concatenation."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.encoders = nn.ModuleList()
        for i, c in enumerate(ch):
            cin = config.in_channels if i == 0 else ch[i - 1]
            self.encoders.append(ConvBlock(cin, c, stride=1 if i == 0 else 2))
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(len(ch) - 1, 0, -1):
            self.upsamples.append(nn.ConvTranspose3d(ch[i], ch[i - 1], 2, stride=2))
            self.decoders.append(ConvBlock(2 * ch[i - 1], ch[i - 1]))
        self.head = nn.Conv3d(ch[0], config.num_classes, 1)
        # Auxiliary heads for the two decoder levels just above the top one (1/4 and 1/2 scale).
        self.aux_heads = nn.ModuleList()
        if config.deep_supervision:
            for i in range(len(ch) - 1):
                if i >= 1 and i <= 2:
                    self.aux_heads.append(nn.Conv3d(ch[i], config.num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits at full resolution; in training mode with deep supervision also coarser ones.

        In training with deep supervision the return is ``[full, half, quarter]`` logits.
        """
        skips: list[torch.Tensor] = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
        x = skips.pop()
        decoded: list[torch.Tensor] = []
        for up, dec in zip(self.upsamples, self.decoders, strict=True):
            x = up(x)
            x = dec(torch.cat([x, skips.pop()], dim=1))
            decoded.append(x)
        out = self.head(x)
        if not (self.training and self.aux_heads):
            return out
        # decoded[-1] is full res, decoded[-2] half, decoded[-3] quarter.
        extra = [head(decoded[-2 - k]) for k, head in enumerate(self.aux_heads)]
        # aux_heads were created for levels 1 (half) then 2 (quarter): keep that order.
        return [out, *extra]


def _fuse_conv_bn(conv: nn.Conv3d, bn: nn.BatchNorm3d) -> nn.Conv3d:
    """Fold an eval-mode BatchNorm into the convolution before it (exact up to float rounding)."""
    fused = nn.Conv3d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        bias=True,
    )
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.data = conv.weight.detach() * scale.reshape(-1, 1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.data = (bias - bn.running_mean) * scale + bn.bias.detach()
    return fused


def fuse_batchnorm(model: UNet3D) -> UNet3D:
    """Return the model with every Conv3d+BatchNorm3d pair folded (in place, eval mode)."""
    model.eval()
    for module in model.modules():
        if isinstance(module, ConvBlock):
            layers = list(module.children())
            new_layers: list[nn.Module] = []
            i = 0
            while i < len(layers):
                layer = layers[i]
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                if isinstance(layer, nn.Conv3d) and isinstance(nxt, nn.BatchNorm3d):
                    new_layers.append(_fuse_conv_bn(layer, nxt))
                    i += 2
                else:
                    new_layers.append(layer)
                    i += 1
            for name in list(module._modules):
                del module._modules[name]
            for j, layer in enumerate(new_layers):
                module.add_module(str(j), layer)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
