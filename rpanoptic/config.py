"""Config keys of rpanoptic, added to a Detectron2 (yacs) config by :func:`add_rpanoptic_config`."""

from detectron2.config import CfgNode as CN

__all__ = ["add_rpanoptic_config"]


def add_rpanoptic_config(cfg: CN) -> CN:
    """Add every rpanoptic key with its default. Idempotent: a second call changes nothing.

    Each key's comment is its description in docs/CONFIG.md (``make config-doc`` regenerates
    it); values are validated when the model is built (``rpanoptic.modeling.recurrent_config``).
    """
    if "RECURRENT" in cfg.MODEL:
        return cfg
    cfg.MODEL.RECURRENT = CN()
    # N, the number of recurrent steps during training.
    cfg.MODEL.RECURRENT.TIMESTEPS = 20
    # Learning mode: "bptt" | "cbptt" | "rbp" | "crbp" (C-RBP).
    cfg.MODEL.RECURRENT.GRAD = "crbp"

    # K, terms of the Neumann series after the first (rbp/crbp).
    cfg.MODEL.RECURRENT.NEUMANN_STEPS = 15
    # Stop the Neumann series once terms are this small relative to the sum; 0 disables.
    cfg.MODEL.RECURRENT.NEUMANN_RTOL = 0.0
    # How the K vector-Jacobian products become the gradient: "neumann" (the truncated series,
    # the paper's) | "gmres" (the combination with the smallest residual: the same products, a
    # smaller gradient error; how much smaller depends on the Jacobian's spectrum, see
    # tools/benchmark.py solvers).
    cfg.MODEL.RECURRENT.BACKWARD_SOLVER = "neumann"

    # Weight of loss_lcp, the Lipschitz coefficient penalty (cbptt/crbp); the authors' XI.
    cfg.MODEL.RECURRENT.LCP_WEIGHT = 1e-3
    # tau of the penalty: the bound on the Jacobian's column sums ("ones") or its spectral
    # radius ("power").
    cfg.MODEL.RECURRENT.LCP_TAU = 0.9
    # How the penalty reduces over the state's elements: "sum" (authors' panoptic code) | "mean".
    cfg.MODEL.RECURRENT.LCP_REDUCTION = "sum"
    # The penalty's vector: "ones" (the authors': column sums of the Jacobian, blind to entries
    # of opposite signs) | "power" (its dominant left eigenvector by power iteration: bounds the
    # spectral radius; LCP_POWER_ITERS more vector-Jacobian products per step).
    cfg.MODEL.RECURRENT.LCP_VECTOR = "ones"
    # Power-iteration steps per training step for the penalty's eigenvector (LCP_VECTOR "power").
    cfg.MODEL.RECURRENT.LCP_POWER_ITERS = 5
    # How the penalty's gradient is computed: "jvp" (a forward-mode product through one more
    # step; no convolution whose kernel is a feature map) | "double_backward" (the authors').
    # The same gradient.
    cfg.MODEL.RECURRENT.LCP_GRADIENT = "jvp"

    # Steps at inference; 0 means TIMESTEPS.
    cfg.MODEL.RECURRENT.TEST_TIMESTEPS = 0
    # Relative-change tolerance of per-sample halting at inference; 0 disables.
    cfg.MODEL.RECURRENT.HALT_TOL = 0.0
    # How inference iterates to the fixed point: "picard" (the steps training runs) |
    # "anderson" (Anderson acceleration: same cost per step, fewer steps to HALT_TOL).
    cfg.MODEL.RECURRENT.TEST_SOLVER = "picard"
    # Differences Anderson mixing keeps (TEST_SOLVER "anderson").
    cfg.MODEL.RECURRENT.ANDERSON_MEMORY = 5

    # Run the steps that build no graph through torch.compile (faster after a first call that
    # compiles; on a CPU it needs a C++ compiler; falls back to eager with a warning).
    cfg.MODEL.RECURRENT.COMPILE = False
    # Raise FloatingPointError naming the layer and step when a state becomes non-finite.
    cfg.MODEL.RECURRENT.CHECK_FINITE = True
    # Learning-rate multiplier of the recurrent cells' parameters (the optimizer's group lr).
    cfg.MODEL.RECURRENT.LR_FACTOR = 1.0
    # Log recurrence diagnostics (residual, spectral radius, ...) every this many iters; 0: never.
    cfg.MODEL.RECURRENT.DIAGNOSTICS_PERIOD = 100

    cfg.MODEL.HGRU = CN()
    # Size of the inhibition and excitation kernels (odd).
    cfg.MODEL.HGRU.KERNEL_SIZE = 3
    # Normalisation inside the cell: "GN", "BN", "SyncBN" or "" (none).
    cfg.MODEL.HGRU.NORM = "GN"
    # Non-linearity: "softplus", "relu" or "tanh".
    cfg.MODEL.HGRU.NONLINEARITY = "softplus"
    # Groups of GroupNorm when NORM is "GN"; must divide the channels.
    cfg.MODEL.HGRU.GN_GROUPS = 32

    cfg.MODEL.RFPN = CN()
    # FPN levels that get an hGRU recurrence (build_resnet_rfpn_backbone).
    cfg.MODEL.RFPN.LEVELS = ["p2", "p3", "p4", "p5"]
    # Initial per-channel scale of each level's recurrent residual p + scale * h (0: starts as
    # the feed-forward FPN, right for fine-tuning a feed-forward checkpoint; 1 for from scratch).
    cfg.MODEL.RFPN.SCALE_INIT = 0.0
    # Where each recurrence sits: "output" (on the level's output, after the top-down merge:
    # only that level sees it) | "topdown" (in the top-down path before the output conv, so
    # every finer level receives it: a recurrent p3 reaches p2, where boxes under 112 px pool).
    cfg.MODEL.RFPN.PLACEMENT = "output"
    # Width of each level's recurrence, one per LEVELS entry, between 1x1 projections from and
    # to the FPN's channels; [] runs every recurrence at MODEL.FPN.OUT_CHANNELS, unprojected.
    # A step's cost grows with the width squared.
    cfg.MODEL.RFPN.WIDTHS = []

    # DistributedDataParallel's find_unused_parameters (off: every parameter is used each step).
    cfg.MODEL.DDP_FIND_UNUSED_PARAMETERS = False
    return cfg
