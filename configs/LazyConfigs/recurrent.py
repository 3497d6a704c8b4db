"""Pieces shared by rpanoptic's LazyConfigs: an hGRU recurrence as a LazyCall, with the same
defaults as the YAML configs (rpanoptic.config.add_rpanoptic_config)."""

from detectron2.config import LazyCall as L

from rpanoptic.recurrence import HGRUCell, Recurrence


def hgru_recurrence(
    channels: int, name: str, timesteps: int = 20, grad: str = "crbp", gn_groups: int = 32
):
    """A Recurrence of an HGRUCell with ``channels`` (GroupNorm in ``gn_groups`` groups);
    ``name`` is its module path in the model (errors and logs name the layer by it)."""
    return L(Recurrence)(
        cell=L(HGRUCell)(
            channels=channels,
            kernel_size=3,
            norm="GN",
            nonlinearity="softplus",
            timesteps=timesteps,
            gn_groups=gn_groups,
        ),
        timesteps=timesteps,
        grad=grad,
        neumann_steps=15,
        lcp_tau=0.9,
        lcp_reduction="sum",
        name=name,
    )


# Read by tools/lazyconfig_train_net.py: the weight of the LCP (C-BPTT/C-RBP; ignored by the
# other modes) and how often the recurrent layers' diagnostics are logged.
recurrent_train = dict(lcp_weight=1e-3, diagnostics_period=100)
