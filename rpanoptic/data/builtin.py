"""Registers the datasets rpanoptic ships: ``synthetic_panoptic_{train,val}`` (standard panoptic),
with ``_separated`` (Panoptic FPN's) and ``_stuffonly`` variants, under ``<datasets>``
(``$RPANOPTIC_DATASETS``, else ``$DETECTRON2_DATASETS``, else ``datasets``). Nothing is read here:
a missing split fails when it is loaded, with the command that makes it."""

from .synthetic import register_synthetic_panoptic

register_synthetic_panoptic()
