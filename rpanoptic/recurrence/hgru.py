"""The hGRU cell: one step h_{t+1} = F(x, h_t) of a horizontal gated recurrent unit.

The hGRU (Linsley et al. 2018; used by C-RBP, Linsley et al. 2020) models horizontal
connections inside one feature map: a state h is inhibited and then excited by convolutions of
itself, and mixed back into h through a learned gate. For channels C and a map of size H x W:

    g1 = sigmoid(N1(U1 * h) + b1)                  gain gate            (B, C, H, W)
    c1 = N2(W_I * (g1 . h))                        inhibition kernel    (B, C, H, W)
    z  = f(x - f((alpha . h + mu) . c1))           inhibited state
    g2 = sigmoid(N3(U2 * z) + b2)                  mix gate
    c2 = N4(W_E * z)                               excitation kernel
    h~ = f(kappa . z + gamma . c2 + omega . z . c2) candidate state
    h' = (1 - g2) . h + g2 . h~                    convex mix

"*" is convolution (U1, U2: 1x1; W_I, W_E: k x k), "." the element-wise product, N1..N4 are
normalisation layers (GroupNorm, BatchNorm, SyncBatchNorm or none), f is the non-linearity and
alpha, mu, kappa, gamma, omega are per-channel parameters.

Initialisation follows the paper's intent: the gate biases b1 = log(u), b2 = -log(u) with
u ~ U(1, timesteps - 1) per channel ("chrono" initialisation), so the mix gate starts small and
early steps update slowly; the biases sit after the normalisation so that the normalisation
cannot cancel them. The kernels' normalisation gains (N2, N4) start at 0.1 as in the reference
hGRU; the gates' (N1, N3) start at 1, so that a gate's pre-activation varies by O(1) around its
bias, as in the authors' panoptic cell (whose gates have no normalisation). With gains of 0.1
there (the reference Pathfinder hGRU, trained with Adam), the gates were constant to +-2.5% and
their weights received gradients near 5e-4 under SGD. The fresh cell is contractive (its
Jacobian's spectral radius below 1, tested; about 0.96 at N = 10, above the LCP's tau = 0.9, so
the penalty acts from the first iterations).
"""

from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn

from .arguments import Rule, at_least, check_arguments, is_count, one_of
from .sync_bn import SyncBatchNorm2d

__all__ = ["HGRUCell", "NONLINEARITIES", "NORMS", "ARGUMENTS", "softplus"]


class _Softplus(torch.autograd.Function):
    """softplus(x) = log(1 + e^x), as relu(x) + log(1 + e^-|x|); derivative sigmoid(x).

    Same values as ``F.softplus`` to float32 rounding (both are within 6e-7 of a float64
    reference), about 5x faster on CPU builds whose vectorised ``log1p`` is missing (measured
    here: 1.8 ms against 8.8 ms on 1.6 M elements, a quarter of an hGRU step). The backward is
    written with differentiable ops, so the LCP's double backward works through it.
    """

    @staticmethod
    def forward(x):
        return x.clamp(min=0) + torch.log(1 + torch.exp(-x.abs()))

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return tangent * torch.sigmoid(x)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)), element-wise (see ``_Softplus``). Under tracing (export), the same
    formula as plain tensor operations, which a trace records (it cannot record a Python
    autograd function)."""
    if torch.jit.is_tracing():
        return x.clamp(min=0) + torch.log(1 + torch.exp(-x.abs()))
    return _Softplus.apply(x)


NONLINEARITIES: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softplus": softplus,
    "relu": F.relu,
    "tanh": torch.tanh,
}


def _group_norm(channels: int, groups: int) -> nn.Module:
    if channels % groups != 0:
        raise ValueError(
            f"HGRUCell: norm='GN' needs channels divisible by the number of groups, got "
            f"channels={channels} and groups={groups}; pick channels that are a multiple of "
            f"{groups} or pass gn_groups= a divisor of {channels}."
        )
    return nn.GroupNorm(groups, channels)


NORMS: Dict[str, Callable[[int, int], nn.Module]] = {
    "GN": _group_norm,
    "BN": lambda c, g: nn.BatchNorm2d(c),
    "SyncBN": lambda c, g: SyncBatchNorm2d(c),
    "": lambda c, g: nn.Identity(),
}


ARGUMENTS: Dict[str, Rule] = {
    "channels": at_least(1),
    "kernel_size": Rule(lambda v: is_count(v) and v >= 1 and v % 2 == 1, "an odd integer >= 1"),
    "norm": one_of(NORMS),
    "nonlinearity": one_of(NONLINEARITIES),
    "gn_groups": at_least(1),
}
"""The rules of :class:`HGRUCell`'s arguments, in its signature's order (also applied to the
config keys behind them). ``timesteps`` has none: it only spreads the gate biases' start."""


class HGRUCell(nn.Module):
    """One hGRU step. ``forward(x, h) -> h_next``, all of shape (B, C, H, W).

    Args:
        channels: C, channels of the input and the state.
        kernel_size: size k of the inhibition and excitation kernels (odd).
        norm: "GN", "BN", "SyncBN" or "" (none), the normalisation N1..N4.
        nonlinearity: "softplus", "relu" or "tanh", the function f.

    Keyword-only:
        timesteps: N used only to initialise the gate biases (u ~ U(1, N - 1)).
        gn_groups: number of groups when ``norm == "GN"``; must divide ``channels``.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        norm: str = "GN",
        nonlinearity: str = "softplus",
        *,
        timesteps: int = 8,
        gn_groups: int = 32,
    ):
        super().__init__()
        check_arguments(
            "HGRUCell",
            ARGUMENTS,
            channels=channels,
            kernel_size=kernel_size,
            norm=norm,
            nonlinearity=nonlinearity,
            gn_groups=gn_groups,
        )
        self.channels = channels
        self.nonlinearity = NONLINEARITIES[nonlinearity]
        make_norm = NORMS[norm]
        self.norms = nn.ModuleList([make_norm(channels, gn_groups) for _ in range(4)])

        self.gain_gate = nn.Conv2d(channels, channels, 1, bias=False)  # U1
        self.mix_gate = nn.Conv2d(channels, channels, 1, bias=False)  # U2
        self.gain_bias = nn.Parameter(torch.empty(1, channels, 1, 1))  # b1
        self.mix_bias = nn.Parameter(torch.empty(1, channels, 1, 1))  # b2
        shape = (channels, channels, kernel_size, kernel_size)
        self.w_inh = nn.Parameter(torch.empty(shape))  # W_I
        self.w_exc = nn.Parameter(torch.empty(shape))  # W_E
        for name in ("alpha", "mu", "kappa", "gamma", "omega"):
            self.register_parameter(name, nn.Parameter(torch.empty(1, channels, 1, 1)))
        self.padding = kernel_size // 2
        self.reset_parameters(timesteps)

    @torch.no_grad()
    def reset_parameters(self, timesteps: int = 8) -> None:
        """Initialise as the hGRU paper intends (see the module docstring)."""
        nn.init.orthogonal_(self.gain_gate.weight)
        nn.init.orthogonal_(self.mix_gate.weight)
        nn.init.orthogonal_(self.w_inh)
        nn.init.orthogonal_(self.w_exc)
        # Chrono initialisation, written into the parameters themselves (in place).
        u = torch.empty(1, self.channels, 1, 1).uniform_(1.0, max(1.0, timesteps - 1.0))
        self.gain_bias.copy_(u.log())
        self.mix_bias.copy_(-u.log())
        self.alpha.fill_(0.1)
        self.mu.fill_(1.0)
        self.kappa.fill_(0.5)
        self.gamma.fill_(1.0)
        self.omega.fill_(0.5)
        # Gains: 1 for the gates' norms (N1, N3), 0.1 for the kernels' norms (N2, N4).
        for n, gain in zip(self.norms, (1.0, 0.1, 1.0, 0.1)):
            if getattr(n, "weight", None) is not None:
                n.weight.fill_(gain)
                n.bias.zero_()

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step. Args: x, h of shape (B, C, H, W). Returns h_next of the same shape."""
        f, (n1, n2, n3, n4) = self.nonlinearity, self.norms
        g1 = torch.sigmoid(n1(self.gain_gate(h)) + self.gain_bias)
        c1 = n2(F.conv2d(g1 * h, self.w_inh, padding=self.padding))
        z = f(x - f((self.alpha * h + self.mu) * c1))
        g2 = torch.sigmoid(n3(self.mix_gate(z)) + self.mix_bias)
        c2 = n4(F.conv2d(z, self.w_exc, padding=self.padding))
        candidate = f(self.kappa * z + self.gamma * c2 + self.omega * z * c2)
        return h + g2 * (candidate - h)

    def extra_repr(self) -> str:
        k = self.w_inh.shape[-1]
        return f"channels={self.channels}, kernel_size={k}"
