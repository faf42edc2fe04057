"""Triton glue: the tensors between steps, model settings and configs, the ensembles' wiring, logs,
metrics and server_info, and the Python models' sources (``model_repository/``, copied at export)."""
