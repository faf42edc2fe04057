"""Segment Anything: click-to-mask, its prompts and its pre/postprocessing."""
