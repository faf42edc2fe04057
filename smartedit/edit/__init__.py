"""The edit as a request: its record of parameters, tasks, photos and masks, the region edited, the
work before denoising (preprocessing) and after it (postprocessing), and the provenance a PNG carries."""
