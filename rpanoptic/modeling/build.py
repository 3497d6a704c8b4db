"""``build_model`` with rpanoptic's checks: config validation and a helpful registry miss."""

from detectron2.modeling import build_model as d2_build_model

from .recurrent_config import validate_recurrent_config

__all__ = ["build_model", "has_recurrence"]

OUR_NAMES = ("build_resnet_rfpn_backbone", "RecurrentMaskRCNNConvUpsampleHead")


def build_model(cfg):
    """Validate every rpanoptic key (MODEL.RECURRENT / MODEL.HGRU / MODEL.RFPN, also those the
    model does not read, such as LCP_WEIGHT), then build the model. The components check the
    keys they read themselves, so Detectron2's own ``build_model`` names a bad key as well.

    A registry miss for one of rpanoptic's names raises KeyError saying to import rpanoptic
    (which registers them) before building the model.
    """
    validate_recurrent_config(cfg)
    try:
        model = d2_build_model(cfg)
    except KeyError as e:
        if any(name in str(e) for name in OUR_NAMES):
            raise KeyError(
                f"{e.args[0] if e.args else e} rpanoptic's components are registered when the "
                "package is imported: import rpanoptic before build_model (also in every worker "
                "process)."
            ) from e
        raise
    return model


def has_recurrence(cfg) -> bool:
    """Whether ``cfg`` builds a model with a recurrent layer (RFPN or recurrent mask head)."""
    return cfg.MODEL.BACKBONE.NAME == OUR_NAMES[0] or (cfg.MODEL.ROI_MASK_HEAD.NAME == OUR_NAMES[1])
