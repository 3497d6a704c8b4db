"""The recurrence's profiler ranges: each phase shows once per step, none under tracing."""

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from rpanoptic.recurrence import HGRUCell, Recurrence
from rpanoptic.recurrence.phases import PHASES, phase


def _counts(grad, training=True, steps=3):
    torch.manual_seed(0)
    rec = Recurrence(HGRUCell(4, 3, norm="GN", gn_groups=2, timesteps=steps), steps, grad=grad)
    rec.train(training)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with torch.set_grad_enabled(training):
                h = rec(x)
                if training:
                    loss = h.square().mean() + (rec.lcp if rec.lcp is not None else 0)
                    loss.backward()
    names = [e.name for e in prof.events()]
    return {name: names.count(f"recurrence/{name}") for name in PHASES}


def test_crbp_step_marks_each_of_its_phases_once_per_step():
    counts = _counts("crbp")
    for name in (
        "graph_free_steps",
        "implicit_step",
        "backward/recompute",
        "backward/neumann_series",
        "backward/lcp",
        "backward/parameter_gradients",
    ):
        assert counts[name] == 2, (name, counts)
    assert counts["unrolled_steps"] == 0


def test_rbp_has_no_penalty_phase_and_bptt_unrolls():
    rbp = _counts("rbp")
    assert rbp["backward/lcp"] == 0 and rbp["backward/neumann_series"] == 2
    bptt = _counts("bptt")
    assert bptt["unrolled_steps"] == 2
    assert bptt["graph_free_steps"] == 0 and bptt["backward/neumann_series"] == 0


def test_inference_marks_only_the_graph_free_steps():
    counts = _counts("crbp", training=False)
    assert counts["graph_free_steps"] == 2
    assert sum(counts.values()) == 2


def test_phases_stay_out_of_a_traced_graph_and_unknown_names_fail():
    rec = Recurrence(HGRUCell(4, 3, norm="GN", gn_groups=2), 3, grad="crbp").eval()
    traced = torch.jit.trace(rec, (torch.randn(1, 4, 6, 6),), check_trace=False)
    assert "profiler" not in str(traced.inlined_graph)
    with pytest.raises(ValueError, match="unknown recurrence phase 'forward'"):
        phase("forward")
