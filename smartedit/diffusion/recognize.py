"""The diffusion families SmartEdit knows, and which one a diffusers pipeline folder belongs to.

A family is told apart by what its folder declares, before any weights are loaded: the pipeline
class in ``model_index.json``, the components it lists, and the denoiser's config (the UNet's input
channels). ``identify`` names the family or says what it found and which families this server knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping


@dataclass(frozen=True)
class Found:
    """What a pipeline folder declares: its ``model_index.json`` and its denoiser's config."""

    pipeline_class: str
    components: frozenset[str]
    unet_in_channels: int | None  # None: no UNet (a transformer denoiser)
    latent_channels: int
    # The UNet takes only the timestep and the text besides its channels: no class or added embeddings
    # (SDXL's text_time, unCLIP's image embeddings), no image projection.
    plain_unet: bool = True
    # The UNet's added conditioning (its config's ``addition_embed_type``): "text_time" for SDXL (the pooled
    # prompt and the size and crop ids), None for none.
    added_conditioning: str | None = None

    def describe(self) -> str:
        """What it is, in words a person recognizes (SDXL, InstructPix2Pix, ...)."""
        denoiser = (f"a UNet of {self.unet_in_channels} input channels" if self.unet_in_channels is not None
                    else "no UNet (" + ", ".join(sorted(self.components & _DENOISERS)) + ")")
        kind = next((words for test, words in _KINDS if test(self)), "a pipeline")
        return f"{kind} ({self.pipeline_class}, {denoiser})"


_DENOISERS = frozenset({"unet", "transformer", "prior", "decoder"})
# What a refused folder is called, first match wins: the families people will try first.
_KINDS: tuple[tuple[Callable[[Found], bool], str], ...] = (
    (lambda f: "Flux" in f.pipeline_class, "a FLUX pipeline"),
    (lambda f: "transformer" in f.components, "a transformer-denoiser pipeline"),
    (lambda f: "text_encoder_2" in f.components or "XL" in f.pipeline_class, "an SDXL pipeline (two text encoders)"),
    (lambda f: "InstructPix2Pix" in f.pipeline_class or f.unet_in_channels == 2 * f.latent_channels,
     "an InstructPix2Pix pipeline (image-conditioned UNet)"),
    (lambda f: "ControlNet" in f.pipeline_class, "a ControlNet pipeline"),
    (lambda f: f.unet_in_channels == f.latent_channels and f.plain_unet, "a text-to-image Stable Diffusion pipeline"),
)


@dataclass(frozen=True)
class Family:
    """One family: its name (as ``pipeline.json`` and ``server_info`` say it), a line about it, and the test
    that claims a folder for it."""

    name: str
    summary: str
    claims: Callable[[Found], bool]


SD_INPAINT = Family(
    name="sd-inpaint",
    summary="Stable Diffusion 1.x/2.x inpainting: one CLIP text encoder, a UNet of latents + mask + "
            "masked-image latents (9 channels)",
    claims=lambda f: (f.unet_in_channels == 2 * f.latent_channels + 1 and f.plain_unet
                      and "text_encoder" in f.components and "text_encoder_2" not in f.components
                      and "XL" not in f.pipeline_class and "ControlNet" not in f.pipeline_class),
)

SD_LATENT_BLEND = Family(
    name="sd-latent-blend",
    summary="any Stable Diffusion 1.x/2.x checkpoint with a 4-channel UNet (text-to-image ones too), inpainting by "
            "latent blending as diffusers does",
    claims=lambda f: (f.unet_in_channels == f.latent_channels and f.plain_unet and "text_encoder" in f.components
                      and "text_encoder_2" not in f.components and "XL" not in f.pipeline_class
                      and "ControlNet" not in f.pipeline_class and "Flux" not in f.pipeline_class),
)


INSTRUCT_PIX2PIX = Family(
    name="instruct-pix2pix",
    summary="InstructPix2Pix (SD 1.x): one CLIP text encoder, a UNet of latents + the photo's latents (8 channels); "
            "edits a photo as an instruction says",
    claims=lambda f: (f.unet_in_channels == 2 * f.latent_channels and f.plain_unet
                      and "text_encoder" in f.components and "text_encoder_2" not in f.components
                      and "XL" not in f.pipeline_class and "ControlNet" not in f.pipeline_class),
)


def _sdxl(found: Found) -> bool:
    """SDXL's shape: its two text encoders and a UNet conditioned on the pooled prompt and size/crop ids, and
    nothing more (no class embeddings, no image projection, no ControlNet)."""
    return (found.added_conditioning == "text_time" and {"text_encoder", "text_encoder_2"} <= found.components
            and not found.plain_unet and "ControlNet" not in found.pipeline_class
            and not any(key in found.components for key in ("image_encoder", "controlnet")))


SDXL_INPAINT = Family(
    name="sdxl-inpaint",
    summary="Stable Diffusion XL inpainting: two CLIP text encoders, a UNet of latents + mask + masked-image latents "
            "(9 channels) conditioned on the pooled prompt and size ids",
    claims=lambda f: _sdxl(f) and f.unet_in_channels == 2 * f.latent_channels + 1,
)

SDXL_LATENT_BLEND = Family(
    name="sdxl-latent-blend",
    summary="any Stable Diffusion XL checkpoint with a 4-channel UNet (base and fine-tunes), inpainting by latent "
            "blending as diffusers does",
    claims=lambda f: _sdxl(f) and f.unet_in_channels == f.latent_channels,
)

KNOWN: tuple[Family, ...] = (SD_INPAINT, SD_LATENT_BLEND, SDXL_INPAINT, SDXL_LATENT_BLEND, INSTRUCT_PIX2PIX)


# UNet config entries that give it inputs beyond latents, timestep and text (diffusers' UNet2DConditionModel).
_UNET_EXTRAS = ("class_embed_type", "addition_embed_type", "encoder_hid_dim_type", "num_class_embeds")


class UnknownFamily(ValueError):
    """A pipeline of no family this server knows."""


def read_found(model_index: Mapping, unet_config: Mapping | None, vae_config: Mapping | None) -> Found:
    """``Found`` from a folder's ``model_index.json`` and its ``unet``/``vae`` configs (None where absent)."""
    components = frozenset(key for key, value in model_index.items()
                           if not key.startswith("_") and isinstance(value, (list, tuple)) and value[0] is not None)
    return Found(
        pipeline_class=str(model_index.get("_class_name", "an unnamed pipeline")),
        components=components,
        unet_in_channels=int(unet_config["in_channels"]) if unet_config and "in_channels" in unet_config else None,
        latent_channels=int((vae_config or {}).get("latent_channels", 4)),
        plain_unet=not any((unet_config or {}).get(key) for key in _UNET_EXTRAS),
        added_conditioning=(unet_config or {}).get("addition_embed_type"),
    )


def identify(found: Found) -> Family:
    """The family ``found`` belongs to.

    Raises:
        UnknownFamily: none claims it; the message names what was found and the families known.
    """
    for family in KNOWN:
        if family.claims(found):
            return family
    known = "; ".join(f"{family.name} ({family.summary})" for family in KNOWN)
    raise UnknownFamily(f"it is {found.describe()}, of no family this server knows. Known: {known}")
