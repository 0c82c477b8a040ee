"""HRNet (Sun et al., "Deep High-Resolution Representation Learning for Human Pose Estimation", CVPR 2019; Wang et
al., TPAMI 2020) with squeeze-and-excitation blocks and RITM-style interaction maps (Sofiiuk et al., "Reviving
Iterative Training with Mask Guidance for Interactive Segmentation", 2021), as used by Kim et al., "Morphology-Aware
Interactive Keypoint Estimation", MICCAI 2022.

The network keeps a high-resolution branch (1/4 of the input) through the whole network and adds branches at 1/8,
1/16 and 1/32 stage by stage; every module exchanges information between all branches (repeated multi-scale
fusion). The head is HRNetV2's: all branches upsampled to 1/4 and concatenated, two 1x1 convolutions to ``K``
heatmap logits, bilinearly upsampled to the input size (``output_stride=1``: heatmap index ``i`` is input pixel
``i``, see :mod:`monai_ext` for the axis order).

Interaction (optional, ``hint_channels > 0``): the input is ``cat([image, maps])`` along the channels, ``maps`` the
``hint_channels`` interaction maps (user-click heatmaps, optionally the previous prediction). As in RITM's
``Conv1S``, the maps go through a 1x1 convolution, LeakyReLU, a 3x3 stride-2 convolution and a learnable scale
(initialised to 0.05), and are *added* to the stem features after its first (stride-2) convolution.

Hint gate (optional, ``hint_gate > 0``, the official network's ``HintEncSENet``): the leading ``hint_gate`` map
channels (the click heatmaps, not the previous prediction) are bilinearly resized (``align_corners=True``) to the
stage-1 output (256 channels at 1/4), concatenated to it, and go through three 3x3 conv-BN-ReLU (256 channels,
strides 2, 1, 1) and a squeeze-and-excitation block with global *max* pooling (``256 -> 256/16 -> sum of the
branch channels``, sigmoid). Its per-channel weights multiply the aggregated branch features before the head.
The official layout (Kim et al.'s ``RITM_SE_HRNet32`` with ``SE_maxpool: True``) is ``se_reduction=None`` (plain
residual blocks, as its ``BasicBlockV1b``/``BottleneckV1b``) with ``hint_gate = K``.

ImageNet-pretrained backbone weights: :func:`load_backbone_weights` loads a local state-dict file.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai_ext.networks.base import record_arguments

__all__ = [
    "HRNet",
    "SEBlock",
    "HintSEGate",
    "BasicBlock",
    "Bottleneck",
    "HighResolutionModule",
    "load_backbone_weights",
    "with_backbone_weights",
]


def _bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=momentum)


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): channel weights from global average pooling, ``C -> C/r -> C``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x)


class HintSEGate(nn.Module):
    """Channel gate driven by the click maps (the official ``HintEncSENet`` of Kim et al. 2022).

    ``cat([features, resize(hints)])`` -> three 3x3 conv-BN-ReLU (``hidden`` channels, strides 2, 1, 1) -> global
    max pooling -> 1x1 conv ``hidden -> hidden/reduction`` -> ReLU -> 1x1 conv ``-> out_channels`` -> sigmoid.

    Args:
        feature_channels: channels of the features the hints are concatenated to (the stage-1 output, 256).
        hint_channels: click-map channels ``K``.
        out_channels: channels of the gated features (the aggregated branches, ``15 * width`` for four branches).
        hidden: channels of the three convolutions (256).
        reduction: SE reduction ratio of ``hidden`` (16).
        bn_momentum: momentum of the batch normalisations.

    Input ``features (B, feature_channels, W', H')`` and ``hints (B, hint_channels, W, H)`` (any size, resized to
    ``W', H'``), output gate weights ``(B, out_channels, 1, 1)`` in (0, 1).
    """

    def __init__(
        self, feature_channels: int, hint_channels: int, out_channels: int, hidden: int = 256, reduction: int = 16, bn_momentum: float = 0.1
    ):
        super().__init__()
        layers: list[nn.Module] = []
        ch = feature_channels + hint_channels
        for stride in (2, 1, 1):
            layers += [nn.Conv2d(ch, hidden, 3, stride, 1, bias=False), _bn(hidden, bn_momentum), nn.ReLU(inplace=True)]
            ch = hidden
        self.encoder = nn.Sequential(*layers)
        self.squeeze = nn.Conv2d(hidden, max(1, hidden // reduction), 1)
        self.excite = nn.Conv2d(max(1, hidden // reduction), out_channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: ``kaiming_normal_`` (fan in) encoder convolutions, BN weight 1 and bias 0,
        PyTorch's default for the SE convolutions."""
        for m in self.encoder.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.squeeze.reset_parameters()
        self.excite.reset_parameters()

    def forward(self, features: torch.Tensor, hints: torch.Tensor) -> torch.Tensor:
        hints = F.interpolate(hints, size=features.shape[2:], mode="bilinear", align_corners=True)
        y = self.encoder(torch.cat([features, hints], 1))
        y = torch.amax(y, dim=(2, 3), keepdim=True)  # global max pooling (official ``SE_maxpool: True``)
        return torch.sigmoid(self.excite(F.relu(self.squeeze(y))))


def _shortcut(in_channels: int, out_channels: int, stride: int, bn_momentum: float) -> nn.Module:
    """Residual shortcut: 1x1 strided convolution + BN when the shape changes, else the identity."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), _bn(out_channels, bn_momentum))


class BasicBlock(nn.Module):
    """Residual block ``3x3 -> 3x3`` (+ SE before the addition when ``se_reduction``); ``expansion = 1``."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, se_reduction: int | None = 16, bn_momentum: float = 0.1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes, bn_momentum)
        self.conv2 = nn.Conv2d(planes, out, 3, 1, 1, bias=False)
        self.bn2 = _bn(out, bn_momentum)
        self.se = SEBlock(out, se_reduction) if se_reduction else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out, stride, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.se(self.bn2(self.conv2(y)))
        return self.relu(y + self.downsample(x))


class Bottleneck(nn.Module):
    """Residual bottleneck ``1x1 -> 3x3 -> 1x1`` with ``expansion = 4`` (+ SE before the addition)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, se_reduction: int | None = 16, bn_momentum: float = 0.1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = _bn(planes, bn_momentum)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = _bn(planes, bn_momentum)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _bn(out, bn_momentum)
        self.se = SEBlock(out, se_reduction) if se_reduction else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_channels, out, stride, bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.se(self.bn3(self.conv3(y)))
        return self.relu(y + self.downsample(x))


class HighResolutionModule(nn.Module):
    """``num_branches`` parallel branches of ``num_blocks`` basic blocks, then multi-scale fusion.

    Branch ``b`` has ``channels[b]`` channels at ``2**b`` times the stride of branch 0. Fusion output ``i`` is the
    sum over inputs ``j`` of: ``j == i`` identity; ``j > i`` 1x1 conv + BN, bilinear upsampling to branch ``i``'s
    size; ``j < i`` ``i - j`` 3x3 stride-2 conv + BN (ReLU between them), then ReLU of the sum.
    """

    def __init__(self, channels: Sequence[int], num_blocks: int, se_reduction: int | None = 16, bn_momentum: float = 0.1):
        super().__init__()
        self.channels = list(channels)
        n = len(self.channels)
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(c, c, 1, se_reduction, bn_momentum) for _ in range(num_blocks)]) for c in self.channels
        )
        self.fuse = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    row.append(nn.Sequential(nn.Conv2d(self.channels[j], self.channels[i], 1, bias=False), _bn(self.channels[i], bn_momentum)))
                else:
                    steps = []
                    for s in range(i - j):
                        last = s == i - j - 1
                        out = self.channels[i] if last else self.channels[j]
                        steps += [nn.Conv2d(self.channels[j], out, 3, 2, 1, bias=False), _bn(out, bn_momentum)]
                        if not last:
                            steps.append(nn.ReLU(inplace=True))
                    row.append(nn.Sequential(*steps))
            self.fuse.append(row)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(xs) != len(self.branches):
            raise ValueError(f"HighResolutionModule: expected {len(self.branches)} branches, got {len(xs)}.")
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse):
            total = xs[i]
            for j, layer in enumerate(row):
                if j == i:
                    continue
                y = layer(xs[j])
                if j > i:
                    y = F.interpolate(y, size=xs[i].shape[2:], mode="bilinear", align_corners=False)
                total = total + y
            out.append(self.relu(total))
        return out


class _ScaleLayer(nn.Module):
    """Multiply by a learnable scalar (RITM's ``ScaleLayer``): the interaction maps start as a small perturbation."""

    def __init__(self, init_value: float = 0.05) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.abs()


@record_arguments
class HRNet(nn.Module):
    """HRNet-W``width`` heatmap network with SE blocks, optional RITM-style interaction maps and an optional
    click-driven channel gate (:class:`HintSEGate`) on the aggregated features.

    Args:
        in_channels: image channels.
        out_channels: ``K`` heatmap channels (logits: apply a sigmoid for heatmaps in [0, 1]).
        hint_channels: interaction-map channels appended to the image channels of the input (0: none); ``K`` for
            click heatmaps, ``2K`` for click heatmaps and the previous prediction.
        width: channels of the 1/4 branch ``C``; the branches have ``C, 2C, 4C, 8C`` (32: HRNet-W32).
        num_branches: 1 to 4 (stages 2.. add one branch each).
        num_modules: modules of stages 1..4 (HRNet-W32: ``(1, 1, 4, 3)``); stage 1 has one module.
        num_blocks: residual blocks per branch in every module (HRNet-W32: 4).
        stem_channels: channels of the two stride-2 stem convolutions (64).
        se_reduction: squeeze-and-excitation reduction ratio in every residual block; ``None``/0 disables SE.
        hint_hidden: channels of the 1x1 convolution of the interaction maps (RITM: 16).
        hint_gate: number of *leading* interaction-map channels (the ``K`` click heatmaps, not the previous
            prediction) that drive a :class:`HintSEGate` multiplying the aggregated branch features before the head
            (Kim et al.'s official ``HintEncSENet``, there with ``se_reduction=None``); 0 disables the gate.
        output_stride: 1 (logits upsampled to the input size) or 4 (the 1/4 branch resolution).
        head_bias_prior: initial sigmoid output of the heatmap logits (bias ``log(p / (1 - p))``), so that a
            sparse BCE target starts from a near-empty prediction; ``None`` keeps a zero bias.

    Input ``(B, in_channels + hint_channels, W, H)`` (any size; 1/4-branch sizes are rounded up): the image, then
    the click maps (``K``), then optionally the previous prediction (``K``). Output ``(B, out_channels, W, H)`` for
    ``output_stride=1``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 68,
        hint_channels: int = 0,
        width: int = 32,
        num_branches: int = 4,
        num_modules: Sequence[int] = (1, 1, 4, 3),
        num_blocks: int = 4,
        stem_channels: int = 64,
        se_reduction: int | None = 16,
        hint_hidden: int = 16,
        hint_gate: int = 0,
        output_stride: int = 1,
        head_bias_prior: float | None = 0.01,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if not 1 <= num_branches <= 4:
            raise ValueError(f"HRNet: num_branches must be 1..4, got {num_branches}.")
        if len(num_modules) < num_branches or any(int(m) < 1 for m in num_modules[:num_branches]):
            raise ValueError(f"HRNet: num_modules needs a positive count for each of the {num_branches} stages, got {num_modules}.")
        if output_stride not in (1, 4):
            raise ValueError(f"HRNet: output_stride must be 1 or 4, got {output_stride}.")
        if min(in_channels, out_channels, width, num_blocks, stem_channels) < 1 or hint_channels < 0:
            raise ValueError("HRNet: channel counts and num_blocks must be positive (hint_channels >= 0).")
        if not 0 <= hint_gate <= hint_channels:
            raise ValueError(
                f"HRNet: hint_gate (click-map channels driving the gate) must be in 0..hint_channels={hint_channels}, "
                f"got {hint_gate}."
            )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.hint_channels = int(hint_channels)
        self.hint_gate = int(hint_gate)
        self.output_stride = int(output_stride)
        se = int(se_reduction) if se_reduction else None

        self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, 2, 1, bias=False)
        self.bn1 = _bn(stem_channels, bn_momentum)
        self.conv2 = nn.Conv2d(stem_channels, stem_channels, 3, 2, 1, bias=False)
        self.bn2 = _bn(stem_channels, bn_momentum)
        self.relu = nn.ReLU(inplace=True)
        self.maps_transform = (
            nn.Sequential(
                nn.Conv2d(hint_channels, hint_hidden, 1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(hint_hidden, stem_channels, 3, 2, 1),
                _ScaleLayer(0.05),
            )
            if hint_channels
            else None
        )

        # stage 1: bottlenecks at 1/4 on the stem features
        planes = 64
        layer1 = [Bottleneck(stem_channels, planes, 1, se, bn_momentum)]
        layer1 += [Bottleneck(planes * 4, planes, 1, se, bn_momentum) for _ in range(num_blocks - 1)]
        self.layer1 = nn.Sequential(*layer1)
        pre = [planes * 4]

        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        for stage in range(1, num_branches):
            channels = [width * 2**b for b in range(stage + 1)]
            self.transitions.append(self._transition(pre, channels, bn_momentum))
            self.stages.append(
                nn.Sequential(*[HighResolutionModule(channels, num_blocks, se, bn_momentum) for _ in range(int(num_modules[stage]))])
            )
            pre = channels
        if num_branches == 1:  # a single 1/4 branch: project the bottleneck features to ``width``
            self.transitions.append(self._transition(pre, [width], bn_momentum))
            pre = [width]
        self.branch_channels = pre

        total = sum(pre)
        self.head = nn.Sequential(
            nn.Conv2d(total, total, 1, bias=False),
            _bn(total, bn_momentum),
            nn.ReLU(inplace=True),
            nn.Conv2d(total, out_channels, 1),
        )
        self._init_weights(head_bias_prior)
        # after ``_init_weights``: the gate keeps the official initialisation
        self.gate = HintSEGate(planes * 4, self.hint_gate, total, bn_momentum=bn_momentum) if self.hint_gate else None

    @staticmethod
    def _transition(pre: Sequence[int], cur: Sequence[int], bn_momentum: float) -> nn.ModuleList:
        """Branch ``b`` from branch ``b`` (3x3 conv when the channels change) or, for a new branch, from the last
        existing branch through 3x3 stride-2 convolutions."""
        layers = nn.ModuleList()
        for b, c in enumerate(cur):
            if b < len(pre):
                layers.append(
                    nn.Identity()
                    if pre[b] == c
                    else nn.Sequential(nn.Conv2d(pre[b], c, 3, 1, 1, bias=False), _bn(c, bn_momentum), nn.ReLU(inplace=True))
                )
            else:
                steps: list[nn.Module] = []
                ch = pre[-1]
                for s in range(b + 1 - len(pre)):
                    out = c if s == b - len(pre) else ch
                    steps += [nn.Conv2d(ch, out, 3, 2, 1, bias=False), _bn(out, bn_momentum), nn.ReLU(inplace=True)]
                    ch = out
                layers.append(nn.Sequential(*steps))
        return layers

    def _init_weights(self, head_bias_prior: float | None) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        last = self.head[-1]
        nn.init.normal_(last.weight, std=0.001)
        if head_bias_prior is not None:
            if not 0.0 < head_bias_prior < 1.0:
                raise ValueError(f"HRNet: head_bias_prior must be in (0, 1), got {head_bias_prior}.")
            nn.init.constant_(last.bias, math.log(head_bias_prior / (1.0 - head_bias_prior)))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Branch features ``[(B, C, W/4, H/4), (B, 2C, W/8, H/8), ...]`` of an input with its interaction maps
        (not gated: the gate acts on the aggregated features, see :meth:`forward`)."""
        return self._trunk(x)[0]

    def _trunk(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Branch features and the hint gate ``(B, sum(branch_channels), 1, 1)`` (``None`` without a gate)."""
        expected = self.in_channels + self.hint_channels
        # a traced graph keeps no Python checks (they would only emit TracerWarnings), as in the other networks
        if not torch.jit.is_tracing() and (x.ndim != 4 or x.shape[1] != expected):
            raise ValueError(
                f"HRNet: input must be (B, {expected}, W, H) = image ({self.in_channels}) + interaction maps "
                f"({self.hint_channels}) channels, got {tuple(x.shape)}."
            )
        image, maps = x[:, : self.in_channels], x[:, self.in_channels :]
        y = self.relu(self.bn1(self.conv1(image)))
        if self.maps_transform is not None:
            y = y + self.maps_transform(maps)
        y = self.relu(self.bn2(self.conv2(y)))
        xs = [self.layer1(y)]
        gate = self.gate(xs[0], maps[:, : self.hint_gate]) if self.gate is not None else None
        for transition, stage in zip(self.transitions, self.stages):
            xs = [t(xs[b] if b < len(xs) else xs[-1]) for b, t in enumerate(transition)]
            xs = stage(xs)
        if len(self.stages) == 0:
            xs = [t(xs[b]) for b, t in enumerate(self.transitions[0])]
        return xs, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs, gate = self._trunk(x)
        size = xs[0].shape[2:]
        feats = torch.cat([xs[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in xs[1:]], 1)
        if gate is not None:
            feats = feats * gate
        logits = self.head(feats)
        if self.output_stride == 1:
            logits = F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)
        return logits


def load_backbone_weights(network: nn.Module, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load pretrained (e.g. ImageNet) backbone weights from a local state-dict file into ``network``, in place.

    Every file entry whose name and shape match an entry of ``network.state_dict()`` is loaded; the others are
    skipped, and the network's own values are kept for the entries the file lacks. A convolution weight with 1 input
    channel in the network and 3 in the file (the stem of a grayscale network, the file an RGB one) is summed over
    the input channels: the official code feeds the grayscale image as 3 identical channels, so the result is
    the same. The names must already follow the network's naming: mapping the keys of HRNet-Image-Classification
    checkpoints (``hrnetv2_w32_imagenet_pretrained.pth``) to :class:`HRNet` is not done here.

    Args:
        network: the network to load into (``DataParallel``/``DistributedDataParallel`` wrappers are looked through).
        path: a ``torch.save``-d state dict (``{name: tensor}``); nothing is downloaded.

    Returns:
        ``{"loaded": file entries loaded, "skipped": file entries not loaded (unknown name or other shape),
        "missing": network entries the file did not provide}``, names in order.

    Raises:
        FileNotFoundError: ``path`` is not a file. ValueError: it cannot be read as a state dict.
    """
    if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        network = network.module
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_backbone_weights: backbone weight file {os.fspath(path)!r} does not exist.")
    try:
        weights: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"load_backbone_weights: cannot read backbone weight file {os.fspath(path)!r}: {e}") from e
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(
            f"load_backbone_weights: {os.fspath(path)!r} is not a state dict ({{name: tensor}}), got {type(weights).__name__}."
        )
    state = network.state_dict()
    loaded: list[str] = []
    skipped: list[str] = []
    for name, value in weights.items():
        target = state.get(name)
        if target is not None and value.shape != target.shape and value.ndim == 4 and target.ndim == 4:
            if target.shape[1] == 1 and value.shape[1] == 3 and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
                value = value.sum(dim=1, keepdim=True)  # RGB stem -> grayscale stem (3 identical channels)
        if target is None or value.shape != target.shape:
            skipped.append(name)
            continue
        state[name] = value.to(dtype=target.dtype)
        loaded.append(name)
    network.load_state_dict(state)
    done = set(loaded)
    return {"loaded": loaded, "skipped": skipped, "missing": [k for k in state if k not in done]}


def with_backbone_weights(network: nn.Module, path: str | os.PathLike | None) -> nn.Module:
    """``network`` with :func:`load_backbone_weights` from ``path`` applied (``None``: unchanged), for a bundle config's
    ``network`` id; the counts of loaded, skipped and missing entries are logged."""
    if path:
        report = load_backbone_weights(network, path)
        logging.getLogger(__name__).info(
            f"backbone weights {path}: {len(report['loaded'])} entries loaded, {len(report['skipped'])} skipped "
            f"(name or shape not in the network), {len(report['missing'])} of the network's entries not in the file"
        )
    return network
