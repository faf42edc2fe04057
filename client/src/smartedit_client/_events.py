"""What a streamed edit yields before its result (``InpaintClient.inpaint_stream``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class CheckpointEvent:
    """A checkpoint, every ``checkpoint_every`` steps: what the edit would give from here, and its state.

    Paint on ``image`` (or not) and send both back to continue the edit from this step
    (``InpaintClient.resume``): with the image unchanged, the result is the uninterrupted edit's, byte for
    byte; painted, the edit carries on from the latents moved by the change.

    Attributes:
        step: the steps done.
        total_steps: steps the edit runs.
        image: the predicted clean image at this step, at the edit's working size (the edited region before
            it is scaled back and pasted into the photo).
        png: its PNG bytes as the server sent them.
        resume_state: the edit's state at this step (the README's resume-state format), for ``resume``.
    """

    step: int
    total_steps: int
    image: Image.Image
    png: bytes
    resume_state: bytes = field(repr=False)

    def save(self, folder) -> tuple[Path, Path]:
        """Write ``checkpoint-STEP.png`` and ``checkpoint-STEP.state`` into ``folder``; their paths."""
        image_path = Path(folder) / f"checkpoint-{self.step:04d}.png"
        state_path = image_path.with_suffix(".state")
        image_path.write_bytes(self.png)
        state_path.write_bytes(self.resume_state)
        return image_path, state_path
