"""Where a result comes from: the model, a digest of its weights, and the server's version.

The export writes ``provenance.json`` next to the models that write PNGs; each output PNG carries it
with the edit's parameters (``smartedit.edit.postprocessing``), so that a result can be traced and replayed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

PROVENANCE_FILENAME = "provenance.json"


@functools.cache  # a process serves the version it started with; the lookup reads the install's metadata (~1 ms)
def smartedit_version() -> str:
    try:
        return metadata.version("smartedit")
    except metadata.PackageNotFoundError:  # run from a source tree without installing it
        return "unknown"


def weights_digest(pipeline, modules: tuple[str, ...]) -> str:
    """SHA-256 over the weights of the pipeline's ``modules`` (its family's ``WEIGHTS``: text encoder,
    UNet, VAE for SD), in that order: the same weights give the same digest whatever folder or hub id
    they were loaded from."""
    digest = hashlib.sha256()
    for name in modules:
        for key, tensor in sorted(getattr(pipeline, name).state_dict().items()):
            digest.update(f"{name}.{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Provenance:
    model: str  # what the export was given: a folder's name, a hub id, or the embedded tiny model's name
    weights_sha256: str  # of the weights served: with adapters, after they were fused
    # The LoRA adapters fused into the weights at export, in order (smartedit.export.lora): each file's name, its
    # SHA-256 and the scale it was fused at.
    adapters: tuple[dict, ...] = ()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: Path) -> "Provenance":
        path = Path(path)
        if not path.exists():  # a repository exported before results carried their provenance
            return cls(model="unknown", weights_sha256="unknown")
        fields = json.loads(path.read_text())
        return cls(**{**fields, "adapters": tuple(fields.get("adapters", ()))})
