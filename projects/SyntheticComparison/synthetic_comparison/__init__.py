"""The multi-seed comparison of models on the synthetic panoptic set: the plan and its launcher
(:mod:`.plan`), one run per process (:mod:`.run_one`), and the tables, paired tests and plots
(:mod:`.tables`)."""
