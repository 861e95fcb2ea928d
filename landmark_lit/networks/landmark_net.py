"""Fully convolutional landmark networks: per output cell, a displacement to every landmark and a presence logit.

Output grid (SPEC section 2): with output stride ``s``, cell ``g`` covers input voxels ``[g*s, (g+1)*s)``.
The input is zero-padded at the far end of every axis to a multiple of the network's deepest stride
(``pad_multiple``; ``s`` itself unless a feature pyramid brings the deepest features back up), so an input of
size ``n`` gives ``ceil(n / s)`` cells and voxel coordinates are not shifted by the padding.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from landmark_lit.networks.blocks import (
    BasicBlock,
    ConvBNReLU,
    Head,
    avg_pool,
    batch_norm,
    conv,
    select_groups,
)


class DisplacementOutput(NamedTuple):
    """Network output on the cell grid.

    displacement: (B, K, D, *grid) predicted displacement (or its log transform) in input voxels.
    logits: (B, K, *grid) presence logits; sigmoid gives the posterior.
    """

    displacement: Tensor
    logits: Tensor


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad the spatial axes of ``x`` (B, C, *spatial) at their far ends to a multiple of ``multiple``."""
    pads: list[int] = []
    for size in reversed(x.shape[2:]):
        pads += [0, (-size) % multiple]
    return F.pad(x, pads) if any(pads) else x


class _FCNBase(nn.Module):
    spatial_dims: int
    num_landmarks: int
    stride: int

    @property
    def pad_multiple(self) -> int:
        """Inputs are zero-padded at the far end to a multiple of this (the deepest stride)."""
        return self.stride

    def _split(self, reg: Tensor, cls: Tensor) -> DisplacementOutput:
        b, grid = reg.shape[0], reg.shape[2:]
        return DisplacementOutput(reg.view(b, self.num_landmarks, self.spatial_dims, *grid), cls)


def _encoder(
    spatial_dims: int,
    in_channels: int,
    stem_channels: int,
    stage_channels: Sequence[int],
    stage_blocks: Sequence[int],
    pool_before: Sequence[bool],
) -> tuple[nn.Sequential, list[int], list[int]]:
    """The global network's encoder: a stride-2 stem, then residual stages, each after an optional average
    pool. Returns it and, per level (stride 2^(i+1)), the index of its last layer and its channels."""
    layers: list[nn.Module] = [ConvBNReLU(spatial_dims, in_channels, stem_channels, 7, stride=2)]
    level_ends, level_channels = [], []
    cin = stem_channels
    for cout, n_blocks, pool in zip(stage_channels, stage_blocks, pool_before, strict=True):
        if pool:
            level_ends.append(len(layers) - 1)
            level_channels.append(cin)
            layers.append(avg_pool(spatial_dims))
        for _ in range(n_blocks):
            layers.append(BasicBlock(spatial_dims, cin, cout))
            cin = cout
    level_ends.append(len(layers) - 1)
    level_channels.append(cin)
    return nn.Sequential(*layers), level_ends, level_channels


class GlobalNet(_FCNBase):
    """ResNet34-like global network (Noothout et al. 2020, Fig. 2), one class for 2D and 3D.

    stem: conv 7^D, ``stem_channels``, stride 2 -> for each stage i: [avg-pool 2 if ``pool_before[i]``] ->
    ``stage_blocks[i]`` basic blocks of ``stage_channels[i]`` -> regression and classification heads.
    The paper's 3D network: blocks (3, 4, 6, 3), channels (32, 64, 128, 256), pools before stages 1 and 2
    (stride 8); the 2D cephalometric network also pools before stages 3 and 4 (stride 32).

    With ``pyramid_stride`` set, a feature-pyramid head (Lin et al. 2017) brings the deepest features back
    up to that stride before the heads: from the deepest level, a 1^D lateral conv to ``pyramid_channels``,
    then per finer level a nearest up-sampling by 2 plus that level's own 1^D lateral conv of its last
    feature map, and a 3^D conv after the last sum. The network stays patch-wise: every cell of the finer
    grid regresses displacements and classifies presence, with the deep stages' receptive field.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_landmarks: K.
        pyramid_stride: output stride of the feature-pyramid head (a power of 2 between 2 and the encoder's
            stride); None: the paper's heads on the deepest features.
        pyramid_channels: channels of the pyramid's levels.
    Input (B, C, *spatial) of any size; output :class:`DisplacementOutput` on the ``ceil(size / stride)`` grid.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_landmarks: int,
        stem_channels: int = 16,
        stage_channels: Sequence[int] = (32, 64, 128, 256),
        stage_blocks: Sequence[int] = (3, 4, 6, 3),
        pool_before: Sequence[bool] = (True, True, False, False),
        head_channels: int = 256,
        pyramid_stride: int | None = None,
        pyramid_channels: int = 64,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not len(stage_channels) == len(stage_blocks) == len(pool_before):
            raise ValueError("stage_channels, stage_blocks and pool_before must have the same length")
        self.spatial_dims, self.num_landmarks = spatial_dims, num_landmarks
        self.encoder_stride = 2 * 2 ** sum(bool(p) for p in pool_before)
        if pyramid_stride is not None and (
            pyramid_stride not in [2**i for i in range(1, 12)] or pyramid_stride > self.encoder_stride
        ):
            raise ValueError(
                f"pyramid_stride must be a power of 2 from 2 to the encoder stride {self.encoder_stride}, "
                f"got {pyramid_stride}"
            )
        self.stride = int(pyramid_stride) if pyramid_stride is not None else self.encoder_stride
        self.features, level_ends, level_channels = _encoder(
            spatial_dims, in_channels, stem_channels, stage_channels, stage_blocks, pool_before
        )
        head_in = level_channels[-1]
        self.pyramid: nn.ModuleDict | None = None
        self._taps: list[int] = []
        if pyramid_stride is not None and self.stride < self.encoder_stride:
            first = int(math.log2(self.stride)) - 1  # the finest level the pyramid reaches
            self._taps = level_ends[first:]
            self.pyramid = nn.ModuleDict(
                {
                    "lateral": nn.ModuleList(
                        nn.Sequential(
                            conv(spatial_dims, c, pyramid_channels, 1),
                            batch_norm(spatial_dims, pyramid_channels),
                        )
                        for c in level_channels[first:]
                    ),
                    "smooth": ConvBNReLU(spatial_dims, pyramid_channels, pyramid_channels, 3),
                }
            )
            head_in = pyramid_channels
        self.regression = Head(spatial_dims, head_in, head_channels, spatial_dims * num_landmarks)
        self.classification = Head(spatial_dims, head_in, head_channels, num_landmarks)

    @property
    def pad_multiple(self) -> int:
        return self.encoder_stride

    def forward(self, x: Tensor) -> DisplacementOutput:
        x_pad = pad_to_multiple(x, self.encoder_stride)
        if self.pyramid is None:
            f = self.features(x_pad)
            return self._split(self.regression(f), self.classification(f))
        taps: list[Tensor] = []
        f = x_pad
        for i, layer in enumerate(self.features):
            f = layer(f)
            if i in self._taps:
                taps.append(f)
        lateral = self.pyramid["lateral"]
        p = lateral[-1](taps[-1])
        for j in range(len(taps) - 2, -1, -1):
            q = lateral[j](taps[j])  # twice p's size: the input was padded to the deepest stride
            p = F.interpolate(p, size=q.shape[2:], mode="nearest") + q
        f = self.pyramid["smooth"](p)
        # cells past ceil(size / stride) lie wholly in the padding: drop them
        s = self.stride
        f = f[(..., *[slice(0, (n + s - 1) // s) for n in x.shape[2:]])]
        return self._split(self.regression(f), self.classification(f))


class LocalNet(_FCNBase):
    """Local refinement network: block (``channels[0]``) -> avg-pool 2 -> block (``channels[1]``) -> heads.

    Stride 2. Each block is a residual block of two 3^D convs. More ``channels`` add levels: each further
    entry is one more avg-pool 2 and block, so ``(32, 64, 128)`` has stride 4 and a receptive field of 30
    input voxels against the paper's 14 (more context around the landmark at the same spacing).

    With ``specialised=True`` (the paper) the module holds one independent network per landmark, run
    together as grouped convolutions: the input holds one sub-image per landmark, (B, K, C, *crop), and
    network k sees only sub-image k. With ``specialised=False`` a single shared network predicts all K
    landmarks from every sub-image and output k is read from sub-image k.

    Input (B, K, C, *crop); output :class:`DisplacementOutput` where landmark k refers to sub-image k.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_landmarks: int,
        channels: Sequence[int] = (32, 64),
        head_channels: int = 64,
        specialised: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        channels = [int(c) for c in channels]
        if len(channels) < 2:
            raise ValueError(f"LocalNet needs at least two levels of channels, got {channels}")
        self.spatial_dims, self.num_landmarks = spatial_dims, num_landmarks
        self.stride = 2 ** (len(channels) - 1)
        self.in_channels, self.specialised = in_channels, specialised
        g = num_landmarks if specialised else 1
        k_out = 1 if specialised else num_landmarks
        layers: list[nn.Module] = [BasicBlock(spatial_dims, in_channels, channels[0], groups=g)]
        for cin, cout in zip(channels[:-1], channels[1:], strict=True):
            layers += [avg_pool(spatial_dims), BasicBlock(spatial_dims, cin, cout, groups=g)]
        self.features = nn.Sequential(*layers)
        c_last = channels[-1]
        self.regression = Head(spatial_dims, c_last, head_channels, spatial_dims * k_out, groups=g)
        self.classification = Head(spatial_dims, c_last, head_channels, k_out, groups=g)

    def forward(self, x: Tensor) -> DisplacementOutput:
        if x.ndim != self.spatial_dims + 3 or x.shape[1] != self.num_landmarks:
            raise ValueError(
                f"LocalNet expects (B, K={self.num_landmarks}, C, *crop) with {self.spatial_dims} spatial "
                f"dims, got {tuple(x.shape)}"
            )
        b, k, c = x.shape[:3]
        if self.specialised:
            x = x.reshape(b, k * c, *x.shape[3:])
        else:
            x = x.reshape(b * k, c, *x.shape[3:])
        f = self.features(pad_to_multiple(x, self.stride))
        reg, cls = self.regression(f), self.classification(f)
        grid = reg.shape[2:]
        if not self.specialised:
            # (B*K, K, ...) -> keep output k of sub-image k
            d = self.spatial_dims
            reg = reg.view(b, k, k, d, *grid).diagonal(dim1=1, dim2=2).movedim(-1, 1)
            cls = cls.view(b, k, k, *grid).diagonal(dim1=1, dim2=2).movedim(-1, 1)
            return DisplacementOutput(reg.contiguous(), cls.contiguous())
        return self._split(reg, cls)

    def for_landmarks(self, keep: Sequence[int]) -> LocalNet:
        """The same networks for landmarks ``keep`` only (inference): a copy whose input is (B, len(keep), C,
        *crop), sub-image j for landmark ``keep[j]``, and whose output j is landmark ``keep[j]``'s, the same
        numbers as the full network gives it. Specialised networks keep only their groups (less work);
        a shared network keeps only those landmarks' output channels."""
        keep = [int(k) for k in keep]
        if not keep or min(keep) < 0 or max(keep) >= self.num_landmarks:
            raise ValueError(f"landmarks to keep must be between 0 and {self.num_landmarks - 1}, got {keep}")
        if self.specialised:
            new = select_groups(self, self.num_landmarks, keep)
        else:
            new = copy.copy(self)
            new._modules = dict(self._modules)
            for name, per in (("regression", self.spatial_dims), ("classification", 1)):
                head = self._modules[name]
                last_name, last = list(head._modules.items())[-1]
                rows = [k * per + a for k in keep for a in range(per)]
                out = copy.copy(last)
                out._parameters = {
                    k: None if p is None else nn.Parameter(p.detach()[rows].clone(), p.requires_grad)
                    for k, p in last._parameters.items()
                }
                out.out_channels = len(rows)
                new_head = copy.copy(head)
                new_head._modules = {**head._modules, last_name: out}
                new._modules[name] = new_head
        new.num_landmarks = len(keep)
        return new
