"""``scheduler``: the ``inpaint`` ensemble's denoising step, run by one of two engines.

The code is smartedit.serving.models.scheduler; this file is what Triton loads."""

from smartedit.serving.models.scheduler import TritonPythonModel  # noqa: F401
