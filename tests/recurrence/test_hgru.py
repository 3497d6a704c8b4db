"""The hGRU cell: shapes, gradients, initialisation, contractivity, argument errors."""

import math

import pytest
import torch

from rpanoptic.recurrence import HGRUCell, Recurrence, spectral_radius


@pytest.mark.parametrize("norm", ["GN", "BN", ""])
@pytest.mark.parametrize("nonlinearity", ["softplus", "relu", "tanh"])
def test_shape_and_gradients_reach_every_parameter(norm, nonlinearity):
    cell = HGRUCell(8, kernel_size=5, norm=norm, nonlinearity=nonlinearity, gn_groups=4)
    x = torch.randn(2, 8, 6, 7, requires_grad=True)
    h = torch.rand(2, 8, 6, 7)
    out = cell(x, cell(x, h))
    assert out.shape == x.shape
    out.square().sum().backward()
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_chrono_bias_initialisation_is_applied():
    n = 12
    cell = HGRUCell(64, norm="GN", timesteps=n)
    low, high = -math.log(n - 1), 0.0
    mix = cell.mix_bias.detach()
    assert torch.all(mix <= high) and torch.all(mix >= low - 1e-6)
    assert mix.std() > 0.1  # drawn per channel, not a constant
    torch.testing.assert_close(cell.gain_bias.detach(), -mix)
    # The mix gate starts small: early steps update slowly.
    assert torch.sigmoid(mix).max() <= 0.5 + 1e-6
    gains = [n.weight.detach() for n in cell.norms]  # gates' norms 1, kernels' norms 0.1
    assert [float(g.unique()) for g in gains] == [1.0, pytest.approx(0.1), 1.0, pytest.approx(0.1)]


@pytest.mark.parametrize("norm", ["GN", "BN", ""])
@pytest.mark.parametrize("timesteps", [3, 8, 20])
def test_fresh_cell_is_contractive(norm, timesteps):
    cell = HGRUCell(32, norm=norm, timesteps=timesteps)
    x = torch.randn(2, 32, 16, 16)
    rec = Recurrence(cell, timesteps).eval()
    h = rec(x)
    rho = spectral_radius(cell, x, h, iters=30)
    assert torch.all(rho < 1.0), rho


def test_group_norm_channel_mismatch_names_channels_and_groups():
    with pytest.raises(ValueError, match=r"channels=48.*groups=32"):
        HGRUCell(48, norm="GN")
    HGRUCell(48, norm="GN", gn_groups=16)  # a divisor works


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(norm="LN"), r"norm='LN'.*'GN', 'BN', 'SyncBN', ''"),
        (dict(nonlinearity="gelu"), r"nonlinearity='gelu'.*'softplus'"),
        (dict(kernel_size=4), r"kernel_size=4.*an odd integer"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        HGRUCell(32, **kwargs)


def test_syncbn_builds_and_is_batchnorm_in_one_process():
    from rpanoptic.recurrence.sync_bn import SyncBatchNorm2d

    cell = HGRUCell(8, norm="SyncBN")
    assert isinstance(cell.norms[0], SyncBatchNorm2d)
    sync, plain = SyncBatchNorm2d(8), torch.nn.BatchNorm2d(8)
    x = torch.randn(3, 8, 5, 5)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)


def test_softplus_matches_reference_with_exact_derivatives():
    from rpanoptic.recurrence.hgru import softplus

    x = torch.cat([torch.linspace(-40, 40, 801, dtype=torch.float64), torch.zeros(1).double()])
    exact = torch.logaddexp(x, torch.zeros_like(x))  # F.softplus returns x above x = 20
    torch.testing.assert_close(softplus(x), exact, rtol=1e-12, atol=1e-15)
    x32 = x.float()
    torch.testing.assert_close(softplus(x32), torch.nn.functional.softplus(x32))
    xs = torch.randn(20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(softplus, (xs,))
    assert torch.autograd.gradgradcheck(softplus, (xs,))
    zero = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(softplus(zero).sum(), zero)
    assert d.item() == 0.5  # sigmoid(0), also at the kink of relu and |x|
