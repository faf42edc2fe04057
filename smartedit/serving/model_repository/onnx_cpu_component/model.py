"""A component (text_encoder, unet, vae_encoder, vae_decoder) served by ONNX Runtime on CPU.

The code is smartedit.serving.models.onnx_cpu_component; this file is what Triton loads."""

from smartedit.serving.models.onnx_cpu_component import TritonPythonModel  # noqa: F401
