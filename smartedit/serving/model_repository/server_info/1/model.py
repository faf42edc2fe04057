"""``server_info``: what this server offers (model, working resolution, samplers, tasks, every parameter's

The code is smartedit.serving.models.server_info; this file is what Triton loads."""

from smartedit.serving.models.server_info import TritonPythonModel  # noqa: F401
