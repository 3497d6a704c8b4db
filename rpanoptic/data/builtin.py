"""Registers the datasets rpanoptic ships: ``synthetic_panoptic_{train,val}`` (the curve scenes)
and ``synthetic_enclosure_{train,val}`` (the enclosure scenes, long-range), each with
``_separated`` (Panoptic FPN's) and ``_stuffonly`` variants, under ``<datasets>``
(``$RPANOPTIC_DATASETS``, else ``$DETECTRON2_DATASETS``, else ``datasets``). Nothing is read here:
a missing split fails when it is loaded, with the command that makes it."""

from .synthetic import KINDS, register_synthetic_panoptic

for _kind in KINDS:
    register_synthetic_panoptic(kind=_kind)
