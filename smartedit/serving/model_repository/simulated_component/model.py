"""A component (text_encoder, unet, vae_encoder, vae_decoder) on a simulated device.

The code is smartedit.serving.models.simulated_component; this file is what Triton loads."""

from smartedit.serving.models.simulated_component import TritonPythonModel  # noqa: F401
