from __future__ import annotations

import math

import pytest
import torch

from landmark_lit.networks import GlobalNet, LocalNet, pad_to_multiple


def conv_params(cin: int, cout: int, k: int, d: int, groups: int = 1, bias: bool = False) -> int:
    return cin * cout * k**d // groups + (cout if bias else 0)


def bn_params(c: int) -> int:
    return 2 * c


def block_params(cin: int, cout: int, d: int, g: int = 1) -> int:
    n = (
        conv_params(cin * g, cout * g, 3, d, g)
        + bn_params(cout * g)
        + conv_params(cout * g, cout * g, 3, d, g)
    )
    n += bn_params(cout * g)
    if cin != cout:
        n += conv_params(cin * g, cout * g, 1, d, g) + bn_params(cout * g)
    return n


def head_params(cin: int, hidden: int, cout: int, d: int, g: int = 1) -> int:
    return (
        conv_params(cin * g, hidden * g, 1, d, g)
        + bn_params(hidden * g)
        + conv_params(hidden * g, hidden * g, 1, d, g)
        + bn_params(hidden * g)
        + conv_params(hidden * g, cout * g, 1, d, g, bias=True)
    )


def expected_global(d: int, k: int, stem=16, chans=(32, 64, 128, 256), blocks=(3, 4, 6, 3), head=256) -> int:
    n = conv_params(1, stem, 7, d) + bn_params(stem)
    cin = stem
    for c, b in zip(chans, blocks, strict=True):
        for _ in range(b):
            n += block_params(cin, c, d)
            cin = c
    return n + head_params(cin, head, d * k, d) + head_params(cin, head, k, d)


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("d,k", [(2, 19), (3, 8)])
def test_global_net_parameter_count_matches_the_paper_design(d, k):
    pools = (True,) * 4 if d == 2 else (True, True, False, False)
    assert count(GlobalNet(d, 1, k, pool_before=pools)) == expected_global(d, k)


@pytest.mark.parametrize("d,k,specialised", [(2, 19, True), (3, 8, True), (3, 8, False)])
def test_local_net_parameter_count(d, k, specialised):
    g = k if specialised else 1
    kout = 1 if specialised else k
    expected = (
        block_params(1, 32, d, g)
        + block_params(32, 64, d, g)
        + head_params(64, 64, d * kout, d, g)
        + head_params(64, 64, kout, d, g)
    )
    assert count(LocalNet(d, 1, k, specialised=specialised)) == expected


def test_specialised_local_net_equals_k_independent_networks():
    k, d = 3, 2
    grouped = LocalNet(d, 1, k, specialised=True).eval()
    singles = [LocalNet(d, 1, 1).eval() for _ in range(k)]
    # copy group i of every grouped parameter into network i
    for name, p in grouped.state_dict().items():
        for i, net in enumerate(singles):
            target = net.state_dict()[name]
            if target.ndim == 0:
                target.copy_(p)
            else:
                n = target.shape[0]
                target.copy_(p[i * n : (i + 1) * n])
    x = torch.randn(2, k, 1, 12, 10)
    out = grouped(x)
    for i, net in enumerate(singles):
        o = net(x[:, i : i + 1])
        torch.testing.assert_close(out.displacement[:, i], o.displacement[:, 0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.logits[:, i], o.logits[:, 0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "d,size,pools,stride",
    [
        (3, (37, 40, 33), (True, True, False, False), 8),
        (2, (100, 70), (True, True, True, True), 32),
        (2, (64, 64), (True, True, False, False), 8),
        (3, (5, 9, 17), (True, True, False, False), 8),
    ],
)
def test_global_output_grid_is_ceil_of_size_over_stride(d, size, pools, stride):
    net = GlobalNet(
        d,
        1,
        3,
        stem_channels=4,
        stage_channels=(4, 4, 4, 4),
        stage_blocks=(1, 1, 1, 1),
        pool_before=pools,
        head_channels=4,
    )
    assert net.stride == stride
    out = net(torch.randn(2, 1, *size))
    grid = tuple(math.ceil(n / stride) for n in size)
    assert out.displacement.shape == (2, 3, d, *grid)
    assert out.logits.shape == (2, 3, *grid)


def test_local_output_grid_and_input_check():
    net = LocalNet(3, 1, 4, channels=(4, 8), head_channels=4)
    out = net(torch.randn(2, 4, 1, 16, 15, 9))
    assert out.displacement.shape == (2, 4, 3, 8, 8, 5)
    assert out.logits.shape == (2, 4, 8, 8, 5)
    with pytest.raises(ValueError, match="LocalNet expects"):
        net(torch.randn(2, 3, 1, 16, 16, 16))


def test_padding_only_at_far_end():
    x = torch.arange(10.0).view(1, 1, 10)
    y = pad_to_multiple(x.view(1, 1, 10, 1), 8)
    assert y.shape == (1, 1, 16, 8)
    assert torch.equal(y[0, 0, :10, 0], torch.arange(10.0))
    assert y[0, 0, 10:].abs().sum() == 0


@pytest.mark.parametrize("d", [2, 3])
def test_folding_batch_norm_keeps_outputs(d):
    import copy

    from landmark_lit.networks import fold_batch_norm

    torch.manual_seed(0)
    nets = [
        (GlobalNet(d, 1, 3, 8, (8, 16), (1, 1), (True, False), 16), torch.randn(1, 1, *[20] * d)),
        (LocalNet(d, 1, 3, (8, 16), 16), torch.randn(2, 3, 1, *[12] * d)),
    ]
    for net, x in nets:
        for m in net.modules():  # non-trivial running statistics and affine parameters
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)
        net.eval()
        folded = fold_batch_norm(copy.deepcopy(net))
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
        with torch.no_grad():
            for a, b in zip(net(x), folded(x), strict=True):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="eval"):
        fold_batch_norm(GlobalNet(d, 1, 3, 8, (8,), (1,), (True,), 16).train())


def tiny_pyramid(d: int, pools, pyramid_stride: int, k: int = 3) -> GlobalNet:
    return GlobalNet(d, 1, k, 4, (4, 6, 8, 8), (1, 1, 1, 1), pools, 8, pyramid_stride, 6)


@pytest.mark.parametrize(
    "d,size,pools,pyramid_stride,encoder_stride",
    [
        (2, (100, 70), (True, True, True, True), 4, 32),
        (2, (243, 301), (True, True, True, True), 8, 32),
        (2, (5, 9), (True, True, True, True), 2, 32),  # smaller than one encoder cell
        (3, (37, 40, 33), (True, True, False, False), 4, 8),
        (3, (17, 8, 31), (True, True, True, False), 2, 16),
    ],
)
def test_pyramid_output_grid_is_ceil_of_size_over_its_stride(d, size, pools, pyramid_stride, encoder_stride):
    net = tiny_pyramid(d, pools, pyramid_stride)
    assert (net.stride, net.pad_multiple) == (pyramid_stride, encoder_stride)
    out = net(torch.randn(2, 1, *size))
    grid = tuple(math.ceil(n / pyramid_stride) for n in size)
    assert out.displacement.shape == (2, 3, d, *grid)
    assert out.logits.shape == (2, 3, *grid)


@pytest.mark.parametrize("d", [2, 3])
def test_pyramid_cells_see_only_their_own_voxels_at_the_finest_level(d):
    """Grid alignment: cell g of the stride-4 output covers input voxels [4g, 4g + 4). A change inside
    one cell's voxels reaches that cell through the finest lateral path; a far-away cell is reached only
    through the coarse levels, so with those switched off it stays exactly unchanged."""
    torch.manual_seed(0)
    pools = (True, True, True, True) if d == 2 else (True, True, True, False)
    net = tiny_pyramid(d, pools, 4).eval()
    with torch.no_grad():  # keep only the stride-4 lateral path: coarser levels contribute zeros
        for lateral in net.pyramid["lateral"][1:]:
            lateral[1].weight.zero_()
            lateral[1].bias.zero_()
    size = (80,) * d
    x = torch.randn(1, 1, *size)
    y = x.clone()
    y[(0, 0, *[slice(40, 44)] * d)] += 5.0  # voxels 40..43 on every axis: cell 10
    with torch.no_grad():
        a, b = net(x).logits[0, 0], net(y).logits[0, 0]
    changed = (a - b).abs() > 1e-6
    assert changed[(10,) * d]
    # the receptive field of the stem (7^D, stride 2), pool, first stage (two 3^D convs at stride 4) and
    # smooth conv (3^D) spans 5 cells each way: cells further than that stay unchanged
    far = torch.ones_like(changed)
    far[(*[slice(5, 16)] * d,)] = False
    assert not changed[far].any()


def test_pyramid_stride_must_be_a_power_of_two_within_the_encoder():
    pools = (True, True, False, False)
    with pytest.raises(ValueError, match="pyramid_stride"):
        tiny_pyramid(3, pools, 16)  # encoder stride 8
    with pytest.raises(ValueError, match="pyramid_stride"):
        tiny_pyramid(3, pools, 6)
    assert tiny_pyramid(3, pools, 8).pyramid is None  # at the encoder stride: the paper's heads


@pytest.mark.parametrize("d", [2, 3])
def test_pyramid_targets_round_trip_through_the_decoder_on_its_grid(d):
    """Targets built for the network's output grid decode back to the landmarks (exact votes)."""
    from landmark_lit.methods.displacement import (
        decode,
        displacement_targets,
        log_transform,
        presence_targets,
    )
    from landmark_lit.networks import DisplacementOutput

    pools = (True, True, True, True) if d == 2 else (True, True, False, False)
    net = tiny_pyramid(d, pools, 4, k=4)
    size = (61, 45, 38)[:d]
    grid = net(torch.zeros(1, 1, *size)).logits.shape[2:]
    lm = (torch.rand(1, 4, d, generator=torch.Generator().manual_seed(d)) * (torch.tensor(size) - 1)).double()
    disp = log_transform(displacement_targets(lm, grid, net.stride))
    logits = presence_targets(lm, grid, net.stride, size, radius=1.5) * 80 - 40
    got = decode(DisplacementOutput(disp, logits), net.stride, "log", True)
    torch.testing.assert_close(got, lm.float(), atol=1e-3, rtol=0)
    centres = decode(DisplacementOutput(disp, logits), net.stride, "none", True)  # C only: the cells' centres
    assert ((centres - lm.float()).abs() <= 1.5 * net.stride + 1e-4).all()


def test_pyramid_network_keeps_the_paper_networks_weights_names():
    """Checkpoints of the paper's network load into it: the pyramid only adds modules."""
    paper = GlobalNet(2, 1, 3, 4, (4, 6, 8, 8), (1, 1, 1, 1), (True,) * 4, 8)
    pyramid = tiny_pyramid(2, (True,) * 4, 4)
    extra = set(pyramid.state_dict()) - set(paper.state_dict())
    assert set(paper.state_dict()) <= set(pyramid.state_dict()) | {
        k for k in paper.state_dict() if "head" in k
    }
    assert extra and all(k.startswith(("pyramid.", "regression.", "classification.")) for k in extra)


@pytest.mark.parametrize("d,size", [(2, (40, 37)), (3, (16, 13, 9))])
def test_deeper_local_net_has_stride_4_and_the_decoders_grid(d, size):
    from landmark_lit.methods.displacement import decode, displacement_targets, presence_targets

    k = 3
    net = LocalNet(d, 1, k, channels=(4, 8, 8), head_channels=4)
    assert net.stride == 4
    out = net(torch.randn(2, k, 1, *size))
    grid = [math.ceil(n / 4) for n in size]
    assert out.displacement.shape == (2, k, d, *grid) and out.logits.shape == (2, k, *grid)
    # targets built on that grid decode back to the landmarks (the network's grid is the decoder's)
    lm = torch.rand(2, k, d, dtype=torch.float64) * (torch.tensor(size) - 1)
    disp = displacement_targets(lm, grid, net.stride)
    logits = (presence_targets(lm, grid, net.stride, size) * 2 - 1) * 40.0
    got = decode(type(out)(disp, logits), net.stride, "linear", True)
    torch.testing.assert_close(got, lm.float(), atol=1e-4, rtol=0)
    # the paper's two levels keep their parameter names (older checkpoints load), a third adds a pool + block
    two, three = LocalNet(d, 1, k).state_dict(), LocalNet(d, 1, k, channels=(32, 64, 128)).state_dict()
    assert {n for n in two if n.startswith("features.")} < {n for n in three if n.startswith("features.")}
    assert set(two) == set(LocalNet(d, 1, k, channels=(32, 64)).state_dict())
    assert count(LocalNet(d, 1, k, channels=(32, 64, 128))) == (
        block_params(1, 32, d, k)
        + block_params(32, 64, d, k)
        + block_params(64, 128, d, k)
        + head_params(128, 64, d, d, k)
        + head_params(128, 64, 1, d, k)
    )
    with pytest.raises(ValueError, match="at least two levels"):
        LocalNet(d, 1, k, channels=(32,))


@pytest.mark.parametrize("d", [2, 3])
def test_grouped_pointwise_convolutions_as_batched_products_keep_outputs(d):
    import copy

    from landmark_lit.networks import fast_grouped_pointwise, fold_batch_norm
    from landmark_lit.networks.blocks import GroupedPointwise2d, GroupedPointwise3d

    torch.manual_seed(0)
    net = LocalNet(d, 1, 5, (4, 6, 8), 6).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    fast = fast_grouped_pointwise(fold_batch_norm(copy.deepcopy(net)))
    kind = GroupedPointwise2d if d == 2 else GroupedPointwise3d
    swapped = [m for m in fast.modules() if isinstance(m, kind)]
    # the shortcuts of blocks 1-3 and the heads' 1^D layers; the 3^D convolutions stay
    assert len(swapped) == 3 + 2 * 3 and all(m.kernel_size == (1,) * d for m in swapped)
    assert sum(type(m) in (torch.nn.Conv2d, torch.nn.Conv3d) for m in fast.modules()) == 6
    assert swapped[0].bias is not None and fast.regression[-1].bias is not None
    x = torch.randn(3, 5, 1, *[12] * d)
    with torch.no_grad():
        for a, b in zip(net(x), fast(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        plain = torch.nn.Conv2d(6, 8, 1, groups=2, bias=False)  # without a bias, 2D
        x2 = torch.randn(2, 6, 5, 7)
        ref = plain(x2)
        torch.testing.assert_close(fast_grouped_pointwise(plain)(x2), ref, atol=1e-6, rtol=1e-6)
        assert isinstance(plain, GroupedPointwise2d)
    # ungrouped, strided or padded 1^D convolutions stay as they are
    for m in (
        torch.nn.Conv2d(4, 4, 1),
        torch.nn.Conv2d(4, 4, 1, groups=2, stride=2),
        torch.nn.Conv2d(4, 4, 1, groups=2, padding=1),
    ):
        assert type(fast_grouped_pointwise(m)) is torch.nn.Conv2d


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("specialised", [True, False])
@pytest.mark.parametrize("folded", [False, True])
def test_local_net_for_some_landmarks_gives_their_outputs_of_the_full_net(d, specialised, folded):
    import copy

    from landmark_lit.networks import fast_grouped_pointwise, fold_batch_norm

    torch.manual_seed(0)
    net = LocalNet(d, 1, 5, (4, 6, 8), 6, specialised=specialised)
    for m in net.modules():  # batch norms that are not the identity
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    if folded:  # as prediction loads it
        net = fast_grouped_pointwise(fold_batch_norm(net))
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(2, 5, 1, *[12] * d)
    keep = [3, 0, 4]
    with torch.no_grad():
        full = net(x)
        part = net.for_landmarks(keep)(x[:, keep])
    assert part.displacement.shape == (2, 3, d, *[3] * d) and part.logits.shape == (2, 3, *[3] * d)
    torch.testing.assert_close(part.displacement, full.displacement[:, keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(part.logits, full.logits[:, keep], atol=1e-5, rtol=1e-5)
    # the full network is untouched and shares no weights with the part
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)
    if specialised:  # less work: the part holds 3 of the 5 networks
        n_full = sum(p.numel() for p in net.parameters())
        assert sum(p.numel() for p in net.for_landmarks(keep).parameters()) * 5 == n_full * 3
    with pytest.raises(ValueError, match="between 0 and 4"):
        net.for_landmarks([5])
    with pytest.raises(ValueError, match="between 0 and 4"):
        net.for_landmarks([])


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 4, 9, 7), (2, 2, 6, 5, 7), (1, 1, 3, 4)])
def test_half_pool_is_average_pooling_forward_and_backward(shape):
    from landmark_lit.networks.blocks import HalfPool

    torch.manual_seed(0)
    d = len(shape) - 2
    ref = torch.nn.AvgPool2d(2) if d == 2 else torch.nn.AvgPool3d(2)
    x = torch.randn(*shape, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    a, b = ref(x), HalfPool(d)(x2)
    assert a.shape == b.shape == (*shape[:2], *[n // 2 for n in shape[2:]])
    torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    g = torch.randn_like(a)
    (a * g).sum().backward()
    (b * g).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, atol=1e-6, rtol=1e-6)
    assert float(x2.grad.abs().sum()) > 0
