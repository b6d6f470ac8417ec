"""Experiments: tasks from a cube, spatial splits, metrics, probes, robustness, and the comparisons the seed
promises (``eo-models experiment ...``)."""
