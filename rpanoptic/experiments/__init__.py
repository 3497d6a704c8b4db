"""Experiment drivers built on the engine: the end-to-end demo (:mod:`.demo`), the multi-seed
comparison (:mod:`.compare`, one run per process through :mod:`.run_one`) and the contraction
check (:mod:`.contraction`). The scripts in ``tools/`` parse arguments and call these."""
