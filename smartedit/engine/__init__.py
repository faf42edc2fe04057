"""The batched denoising engine: admission, the step loop over every active edit, cancellation, its
metrics and latency table."""
