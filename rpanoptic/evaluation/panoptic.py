"""COCO panoptic evaluation that also reports PQ per category.

Detectron2's :class:`COCOPanopticEvaluator` computes panopticapi's per-category results and
keeps only the averages. Per category is where a long-range-grouping effect shows (on the
synthetic dataset: the crossing curves against the compact shapes), so this evaluator adds
``PQ/<category>``, ``SQ/<category>`` and ``RQ/<category>`` to the ``panoptic_seg`` results.
"""

import logging
from collections import OrderedDict

import panopticapi.evaluation as panoptic_eval
from detectron2.evaluation import COCOPanopticEvaluator

__all__ = ["PanopticEvaluator"]

logger = logging.getLogger(__name__)


class PanopticEvaluator(COCOPanopticEvaluator):
    """:class:`COCOPanopticEvaluator` + per-category PQ, SQ, RQ (in percent), keyed by the
    dataset's category names."""

    def evaluate(self):
        captured = {}
        compute = panoptic_eval.pq_compute

        def pq_compute(*args, **kwargs):  # the parent imports it from the module at call time
            captured["result"] = compute(*args, **kwargs)
            return captured["result"]

        panoptic_eval.pq_compute = pq_compute
        try:
            results = super().evaluate()
        finally:
            panoptic_eval.pq_compute = compute
        if results is None or "result" not in captured:  # not the main process
            return results
        names = _category_names(self._metadata)
        per_class = captured["result"]["per_class"]
        extra = OrderedDict()
        for category_id, values in sorted(per_class.items()):
            name = names.get(category_id, str(category_id))
            for metric in ("pq", "sq", "rq"):
                extra[f"{metric.upper()}/{name}"] = 100 * values[metric]
        results["panoptic_seg"].update(extra)
        logger.info(
            "PQ per category: %s",
            ", ".join(f"{k[3:]} {v:.1f}" for k, v in extra.items() if k.startswith("PQ/")),
        )
        return results


def _category_names(metadata) -> dict:
    """Dataset category id -> name, from Detectron2's panoptic metadata."""
    names = {}
    for kind in ("thing", "stuff"):
        ids = metadata.get(f"{kind}_dataset_id_to_contiguous_id", {})
        classes = metadata.get(f"{kind}_classes", [])
        for dataset_id, contiguous in ids.items():
            if contiguous < len(classes):
                names[dataset_id] = classes[contiguous]
    return names
