"""Pathfinder, the contour-tracing benchmark of the C-RBP paper, for the recurrence engine alone
(no Detectron2): are two marker dots at the ends of the same dashed curve?

- :mod:`.generator` -- images, labels and the target path's mask, deterministic by seed.
"""

from .generator import DIFFICULTY, PathfinderSpec, check_label, generate_pathfinder, make_example

__all__ = ["DIFFICULTY", "PathfinderSpec", "check_label", "generate_pathfinder", "make_example"]
