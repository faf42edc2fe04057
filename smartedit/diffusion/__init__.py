"""Diffusion itself: the components' tensor specs, the denoising loop, its samplers and previews."""
