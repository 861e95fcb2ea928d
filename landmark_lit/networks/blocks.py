"""Building blocks shared by the global and local networks, for 2D and 3D (``spatial_dims``).

Every convolution may be *grouped*: with ``groups = G`` a block behaves exactly like G independent blocks
side by side (each group has its own weights and batch-norm statistics). The local stage uses this to run
one specialised network per landmark in a single forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def conv(spatial_dims: int, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Module:
    """Zero-padded convolution without bias (a batch norm follows every conv)."""
    cls = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    return cls(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False, groups=groups)


def batch_norm(spatial_dims: int, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if spatial_dims == 2 else nn.BatchNorm3d(channels)


class HalfPool(nn.Module):
    """2^D average pooling (stride 2, the last row of an odd axis dropped: ``nn.AvgPool2d(2)`` /
    ``AvgPool3d(2)``) as one strided sum per axis: the same numbers to float rounding, and several times
    faster than PyTorch's CPU pooling of (B, C, *spatial) maps with many channels and few voxels, the
    local stage's grouped networks (experiments/bench/RESULTS.md, issue 23)."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = int(spatial_dims)

    def forward(self, x: Tensor) -> Tensor:
        for dim in range(x.ndim - self.spatial_dims, x.ndim):
            half = x.shape[dim] // 2
            pairs = x.narrow(dim, 0, 2 * half).unflatten(dim, (half, 2))
            x = pairs.select(dim + 1, 0) + pairs.select(dim + 1, 1)
        return x * (0.5**self.spatial_dims)


def avg_pool(spatial_dims: int) -> nn.Module:
    return HalfPool(spatial_dims)


class ConvBNReLU(nn.Sequential):
    def __init__(
        self, spatial_dims: int, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            conv(spatial_dims, cin, cout, kernel, stride, groups),
            batch_norm(spatial_dims, cout),
            nn.ReLU(inplace=True),
        )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3^D convs with batch norm; identity or 1^D projection shortcut.

    Channel counts are per group; the module holds ``groups`` independent blocks.
    """

    def __init__(self, spatial_dims: int, cin: int, cout: int, groups: int = 1) -> None:
        super().__init__()
        g = groups
        self.conv1 = ConvBNReLU(spatial_dims, cin * g, cout * g, 3, groups=g)
        self.conv2 = nn.Sequential(
            conv(spatial_dims, cout * g, cout * g, 3, groups=g), batch_norm(spatial_dims, cout * g)
        )
        self.shortcut: nn.Module = (
            nn.Identity()
            if cin == cout
            else nn.Sequential(
                conv(spatial_dims, cin * g, cout * g, 1, groups=g), batch_norm(spatial_dims, cout * g)
            )
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Head(nn.Sequential):
    """Two hidden 1^D convs (batch norm, ReLU) and a linear 1^D output conv.

    Args:
        cin, hidden, cout: channels per group.
    """

    def __init__(self, spatial_dims: int, cin: int, hidden: int, cout: int, groups: int = 1) -> None:
        g = groups
        cls = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        super().__init__(
            ConvBNReLU(spatial_dims, cin * g, hidden * g, 1, groups=g),
            ConvBNReLU(spatial_dims, hidden * g, hidden * g, 1, groups=g),
            cls(hidden * g, cout * g, 1, groups=g),
        )


def fold_batch_norm(net: nn.Module) -> nn.Module:
    """Fold every batch norm that directly follows a convolution into it, in place, for inference.

    In eval mode ``bn(conv(x))`` is one affine map per channel after the conv, so the conv's weights and
    bias absorb it (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and the batch norm becomes an identity:
    the same outputs (to float rounding) with one pass less over every feature map. Returns ``net``.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if net.training:
        raise ValueError("fold_batch_norm is for inference: call net.eval() first")
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())
        for (name_a, a), (name_b, b) in zip(children, children[1:], strict=False):
            if isinstance(a, nn.Conv1d | nn.Conv2d | nn.Conv3d) and isinstance(
                b, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d
            ):
                module._modules[name_a] = fuse_conv_bn_eval(a, b)
                module._modules[name_b] = nn.Identity()
    return net


class _GroupedPointwise:
    """A grouped 1^D convolution (stride 1, no padding) run as one batched matrix product over its groups:
    the same numbers as the convolution, which PyTorch's CPU backends run group by group on their slow
    path (experiments/bench/RESULTS.md, issue 23). Weights, groups and channels stay the convolution's,
    so :func:`select_groups` and the exporters see an ordinary convolution."""

    def forward(self, x: Tensor) -> Tensor:
        b, g = x.shape[0], self.groups
        w = self.weight.view(g, self.out_channels // g, self.in_channels // g)
        y = torch.matmul(w, x.reshape(b, g, self.in_channels // g, -1))  # (B, G, out, N)
        if self.bias is not None:
            y = y.add_(self.bias.view(g, -1, 1))
        return y.reshape(b, self.out_channels, *x.shape[2:])


class GroupedPointwise2d(_GroupedPointwise, nn.Conv2d):
    pass


class GroupedPointwise3d(_GroupedPointwise, nn.Conv3d):
    pass


def fast_grouped_pointwise(net: nn.Module) -> nn.Module:
    """Every grouped 1^D convolution of ``net`` (stride 1, no padding or dilation) runs as a batched matrix
    product (:class:`GroupedPointwise2d` / ``3d``), in place, for inference. Returns ``net``."""
    swap = {nn.Conv2d: GroupedPointwise2d, nn.Conv3d: GroupedPointwise3d}
    for m in net.modules():
        if type(m) in swap and m.groups > 1 and m.padding_mode == "zeros":
            ones, zeros = (1,) * len(m.kernel_size), (0,) * len(m.kernel_size)
            if m.kernel_size == m.stride == m.dilation == ones and m.padding == zeros:
                m.__class__ = swap[type(m)]
    return net


def select_groups(module: nn.Module, groups: int, keep: Sequence[int]) -> nn.Module:
    """A copy of ``module`` that holds only groups ``keep`` of its ``groups`` independent grouped networks.

    Every convolution of the module must have ``groups`` groups and every batch norm ``groups`` blocks of
    channels (the local stage's specialised networks, :class:`BasicBlock` / :class:`Head` with ``groups``);
    their weights, biases and running statistics are sliced group by group, so group ``keep[j]`` of the
    input runs as group j of the copy, with the same numbers. The original is not changed and shares no
    tensors with the copy. For inference, e.g. a second local pass over a few landmarks only.
    """
    index = torch.as_tensor([int(k) for k in keep], dtype=torch.long)
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= groups:
        raise ValueError(f"groups to keep must be between 0 and {groups - 1}, got {list(keep)}")
    n = int(index.numel())

    def rows(t: Tensor) -> Tensor:  # (groups * m, ...) -> (n * m, ...) of the kept groups
        if t.ndim == 0:
            return t.clone()
        if t.shape[0] % groups:
            raise ValueError(f"a tensor of {t.shape[0]} rows does not split into {groups} groups")
        return t.reshape(groups, -1, *t.shape[1:]).index_select(0, index).reshape(-1, *t.shape[1:])

    def sliced(m: nn.Module) -> nn.Module:
        # a shallow copy through the instance dictionary (nn.Module.__setattr__'s checks made this the
        # most of a second local pass's set-up); its own parameter, buffer and child dictionaries follow
        new = object.__new__(type(m))
        state = new.__dict__
        state.update(m.__dict__)
        state["_parameters"] = {
            k: None if p is None else nn.Parameter(rows(p.detach()), p.requires_grad)
            for k, p in m._parameters.items()
        }
        state["_buffers"] = {k: None if b is None else rows(b) for k, b in m._buffers.items()}
        state["_modules"] = {k: None if c is None else sliced(c) for k, c in m._modules.items()}
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            if m.groups != groups:
                raise ValueError(f"a convolution of {m.groups} groups in a module of {groups} groups")
            state["in_channels"] = m.in_channels // groups * n
            state["out_channels"] = m.out_channels // groups * n
            state["groups"] = n
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            state["num_features"] = m.num_features // groups * n
        return new

    return sliced(module)
