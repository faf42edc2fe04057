"""``preprocess``: record the edit as in flight (or refuse it while the server drains), reserve its

The code is smartedit.serving.models.preprocess; this file is what Triton loads."""

from smartedit.serving.models.preprocess import TritonPythonModel  # noqa: F401
