"""How a family's prompts become the tensors its loop reads (a family's ``PROMPTS``).

Preprocess tokenizes the negative prompt and the prompt with each of the pipeline's tokenizers (rows 0
and 1, padded and truncated as diffusers' ``encode_prompt`` does; a text edit adds its source prompt as
row 2); one served model, the family's encoder, takes the ids of every tokenizer and answers the prompt's
embeddings, under the names the loop reads them by (``EditInputs.prompt``). SD: one CLIP tokenizer, the
encoder's last hidden state as ``prompt_embeds``. SDXL: two tokenizers, one encoder graph that runs both
CLIP models and answers their penultimate states concatenated (``prompt_embeds``) and the second's pooled
projection (``pooled_prompt_embeds``), which the family passes to its UNet as ``text_embeds``.

The step tensors follow from the declaration (``smartedit.serving.steps``): the ids tensors are named as
the encoder's inputs, the embeddings as ``embeddings`` maps the encoder's outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from smartedit.diffusion.spec import SDXL_TEXT_ENCODER, TEXT_ENCODER, ComponentSpec, TensorSpec

# The rows of every ids and embeddings tensor: the negative prompt, then the prompt (then, for a text edit,
# its source prompt: smartedit.diffusion.inversion). Declared -1: two or three.
NEGATIVE_ROW, PROMPT_ROW, SOURCE_ROW = 0, 1, 2
PROMPT_ROWS = -1


@dataclass(frozen=True)
class PromptEncoding:
    """A family's tokenizers and prompt encoder."""

    # The pipeline's tokenizer modules (diffusers' names: "tokenizer", "tokenizer_2"): export saves each in
    # a folder of that name beside the models that tokenize, which load them from there. One per encoder
    # input, in the encoder's input order.
    tokenizers: tuple[str, ...]
    # The served model that encodes them: one INT64 ids input per tokenizer, the embeddings as outputs.
    encoder: ComponentSpec
    # Encoder output -> the name the loop reads it by (``EditInputs.prompt``) and the ensemble carries it as.
    embeddings: Mapping[str, str]

    def __post_init__(self):
        if len(self.tokenizers) != len(self.encoder.inputs):
            raise ValueError(f"{len(self.tokenizers)} tokenizers for the {len(self.encoder.inputs)} inputs of "
                             f"{self.encoder.name}: one tokenizer per encoder input")
        unknown = set(self.embeddings) - set(self.encoder.output_names)
        if unknown:
            raise ValueError(f"{sorted(unknown)} are not outputs of {self.encoder.name}")

    @property
    def ids_tensors(self) -> tuple[TensorSpec, ...]:
        """What preprocess hands the encoder: ``[rows, tokens]`` ids per tokenizer."""
        return tuple(TensorSpec(spec.name, spec.datatype, (PROMPT_ROWS, -1)) for spec in self.encoder.inputs)

    @property
    def embedding_tensors(self) -> tuple[TensorSpec, ...]:
        """What the encoder hands the loop: each embedding with its rows, its other axes as they come."""
        outputs = {spec.name: spec for spec in self.encoder.outputs}
        return tuple(TensorSpec(loop_name, outputs[name].datatype, (PROMPT_ROWS,) + (-1,) * len(outputs[name].dims))
                     for name, loop_name in self.embeddings.items())

    def load_tokenizers(self, folder: Path) -> list:
        """The tokenizers export saved in ``folder`` (one subfolder each, named as the module)."""
        from transformers import AutoTokenizer  # the serving processes' import; the exporter has its own

        return [AutoTokenizer.from_pretrained(Path(folder) / module) for module in self.tokenizers]

    def tokenize(self, tokenizers: Sequence, negative_prompt: str, prompt: str, *more: str) -> dict[str, np.ndarray]:
        """The ids tensors by name: ``tokenizers`` (loaded in ``self.tokenizers``' order) on both prompts (and
        ``more``, rows after them), padded and truncated to each tokenizer's ``model_max_length`` as
        ``encode_prompt`` does."""
        ids = {}
        for spec, tokenizer in zip(self.ids_tensors, tokenizers, strict=True):
            ids[spec.name] = tokenizer(
                [negative_prompt, prompt, *more],
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="np",
            ).input_ids.astype(np.int64)
        return ids


# Stable Diffusion 1.x/2.x: one CLIP text model, its last hidden state as the UNet's encoder_hidden_states.
SD_PROMPTS = PromptEncoding(tokenizers=("tokenizer",), encoder=TEXT_ENCODER,
                            embeddings={TEXT_ENCODER.outputs[0].name: "prompt_embeds"})

# Stable Diffusion XL: two tokenizers (the same prompt through both, as diffusers does without ``prompt_2``)
# into one encoder graph; its pooled output reaches the UNet as ``text_embeds``.
SDXL_PROMPTS = PromptEncoding(tokenizers=("tokenizer", "tokenizer_2"), encoder=SDXL_TEXT_ENCODER,
                              embeddings={"hidden_states": "prompt_embeds", "pooled": "pooled_prompt_embeds"})
