"""Pathfinder, the contour-tracing benchmark of the C-RBP paper, for the recurrence engine alone
(no Detectron2): are two marker dots at the ends of the same dashed curve?

- :mod:`.generator` -- images, labels and the target path's mask, deterministic by seed.
- :mod:`.data` -- loading a set for the label or the trace task.
- :mod:`.models` -- the hGRU model and the feed-forward baselines.
- :mod:`.train` -- training (the four learning modes), the stability evaluation, cost.
- :mod:`.fixed_point` -- is a trained hGRU at a fixed point, and is RBP's gradient valid there?
- :mod:`.unfolding` -- the picture of one example through trained hGRUs, step by step.
- :mod:`.reach` -- how far the cue's influence reaches along the cued path.
- :mod:`.compare` -- the comparison over models and seeds, its table and pictures.
- :mod:`.report` -- per-set pictures drawn from result files (or checkpoints).
"""

from .generator import DIFFICULTY, PathfinderSpec, check_label, generate_pathfinder, make_example

__all__ = ["DIFFICULTY", "PathfinderSpec", "check_label", "generate_pathfinder", "make_example"]
