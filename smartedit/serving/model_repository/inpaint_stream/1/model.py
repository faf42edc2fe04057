"""``inpaint_stream``: the edit over a gRPC stream, with progress after every step and previews.

The code is smartedit.serving.models.inpaint_stream; this file is what Triton loads."""

from smartedit.serving.models.inpaint_stream import TritonPythonModel  # noqa: F401
