"""Ensemble definitions (``smartedit.ensembles``): the wiring of the served pipelines."""
