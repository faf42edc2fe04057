"""``segment``: click-to-mask with Segment Anything (smartedit.segmentation.sam).

The code is smartedit.serving.models.segment; this file is what Triton loads."""

from smartedit.serving.models.segment import TritonPythonModel  # noqa: F401
