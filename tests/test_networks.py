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
