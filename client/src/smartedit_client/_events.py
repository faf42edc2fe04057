"""What a streamed edit yields before its result (``InpaintClient.inpaint_stream``)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class ProgressEvent:
    """One denoising step done.

    Attributes:
        step: steps done so far, from 1.
        total_steps: steps the edit runs (``num_inference_steps`` x ``strength``, rounded down; twice that for
            task text_edit, whose inversion steps come first).
    """

    step: int
    total_steps: int


@dataclass(frozen=True)
class PreviewEvent:
    """A cheap look at the edit in progress, every ``preview_every`` steps and at the last.

    Attributes:
        step: the step it shows.
        total_steps: steps the edit runs.
        image: the preview, at latent resolution (1/8 of the image's side on SD models), from a
            linear latent-to-RGB map: colours and layout, not detail.
        png: its PNG bytes as the server sent them.
    """

    step: int
    total_steps: int
    image: Image.Image
    png: bytes
