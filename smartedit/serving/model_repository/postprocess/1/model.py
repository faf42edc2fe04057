"""``postprocess``: each image scaled back to its box and pasted into the request's image where masked

The code is smartedit.serving.models.postprocess; this file is what Triton loads."""

from smartedit.serving.models.postprocess import TritonPythonModel  # noqa: F401
