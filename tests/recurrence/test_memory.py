"""The graph kept for backward: flat in N for rbp/crbp, growing for bptt, below one BPTT step."""

import pytest
import torch

from rpanoptic.recurrence import HGRUCell, Recurrence
from rpanoptic.recurrence.memory import SavedTensorMeter


def saved_bytes(grad, timesteps, channels=8, size=12):
    torch.manual_seed(0)
    cell = HGRUCell(channels, norm="GN", gn_groups=4)
    rec = Recurrence(cell, timesteps, grad=grad).train()
    x = torch.randn(2, channels, size, size, requires_grad=True)
    with SavedTensorMeter(exclude=cell.parameters()) as meter:
        h = rec(x)
        loss = h.square().mean() + (rec.lcp if rec.lcp is not None else 0)
    measured = meter.bytes()
    loss.backward()  # the graph is usable: the measured region held a working graph
    assert all(p.grad is not None for p in cell.parameters())
    return measured


@pytest.mark.parametrize("grad", ["rbp", "crbp"])
def test_implicit_modes_flat_in_timesteps(grad):
    small, large = saved_bytes(grad, 2), saved_bytes(grad, 40)
    assert small > 0
    assert large <= 1.05 * small


@pytest.mark.parametrize("grad", ["bptt", "cbptt"])
def test_bptt_grows_with_timesteps(grad):
    # Linear growth: each step adds the same amount (cbptt adds a constant penalty graph).
    b2, b10, b20 = (saved_bytes(grad, n) for n in (2, 10, 20))
    assert (b10 - b2) / 8 > 0.5 * saved_bytes("bptt", 1)  # each step keeps about one step's graph
    assert (b20 - b10) == pytest.approx((b10 - b2) * 10 / 8, rel=0.02)


def test_crbp_below_half_of_one_bptt_step():
    one_step = saved_bytes("bptt", 1)
    assert saved_bytes("crbp", 40) <= 0.5 * one_step


def test_meter_counts_live_graph_only():
    x = torch.randn(100, requires_grad=True)
    with SavedTensorMeter() as meter:
        y = (x * x).sum()  # saves x (twice, one storage)
        with torch.enable_grad():
            tmp = (x.exp() * 2).sum()  # saves exp(x); freed below
        del tmp
    assert meter.bytes() == 100 * 4
    del y
    assert meter.bytes() == 0
