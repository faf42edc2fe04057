"""``denoise_engine``: the batched denoising engine of one loop instance (smartedit.engine.core).

The code is smartedit.serving.models.denoise_engine; this file is what Triton loads."""

from smartedit.serving.models.denoise_engine import TritonPythonModel  # noqa: F401
