"""Analyses of a model's recurrences (``tools/analyze.py TASK``): where the gradient goes, whether
the penalty keeps them contractive while training, how much they change the features, and what
the mask head makes of crossing instances. Each module holds the analysis and its command line
(``main(argv)``)."""

# task name: (module, one line). The order is the order of ``tools/analyze.py --help``.
TASKS = {
    "gradients": ("rpanoptic.analysis.gradients", "gradient norms per group and mode vs BPTT"),
    "contraction": ("rpanoptic.analysis.contraction", "spectral radius while training, crbp/rbp"),
    "contribution": ("rpanoptic.analysis.contribution", "how much each RFPN recurrence changes p"),
    "mask-probe": ("rpanoptic.analysis.grouping", "mask probabilities on crossing instances"),
}
