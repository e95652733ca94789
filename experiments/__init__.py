"""The BitFit / adapters / full fine-tuning study (arXiv 2401.04051) re-run on taskpatch's own trainer.

``grid`` defines the profiles and the cells, ``study`` runs them (resumable, one JSON line per cell), ``report``
turns a results file into tables, plots and verdicts, and ``references`` holds the published numbers quoted for
context. See ``experiments/README.md``.
"""
