"""Saving and safely loading model weights: safetensors + a JSON sidecar with the SHA-256.

Why safetensors: unlike a pickled ``torch.save`` file, loading it cannot execute code. Why the
sidecar hash: a truncated copy, a wrong file behind ``$HIPPO_WEIGHTS`` or a silent re-training
must never produce results under the old model version; the SHA-256 is checked before any tensor
is read, and its prefix is the model version written into every result.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MODEL_NAME = "hippo-unet"
MODEL_SERIES = "1.0"


class WeightsIntegrityError(RuntimeError):
    """The weights file is missing, unreadable or does not match its recorded SHA-256."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(weights_path: Path) -> Path:
    """``model_weights/hippo_unet.safetensors`` -> ``model_weights/hippo_unet.json``."""
    return Path(weights_path).with_suffix(".json")


def model_version(sha256: str) -> str:
    return f"{MODEL_NAME}-{MODEL_SERIES}+sha256:{sha256[:12]}"


@dataclass(frozen=True)
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    sha256: str

    @property
    def version(self) -> str:
        return model_version(self.sha256)


def save_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, Any]) -> str:
    """Write the tensors, then the sidecar JSON (metadata + sha256). Returns the digest."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={"name": MODEL_NAME})
    # safetensors creates the file owner-only (0600); a node running as another user (the
    # Docker image's, a service account) must be able to read weights it is pointed at.
    path.chmod(0o644)
    digest = sha256_file(path)
    payload = {"name": MODEL_NAME, "file": path.name, "sha256": digest, **metadata}
    sidecar_path(path).write_text(json.dumps(payload, indent=2) + "\n")
    return digest


def load_weights(path: Path) -> LoadedWeights:
    """Verify the file against its sidecar SHA-256, then read it with safetensors."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path = sidecar_path(path)
    if not path.is_file():
        raise WeightsIntegrityError(f"model weights not found: {path}")
    if not meta_path.is_file():
        raise WeightsIntegrityError(
            f"no {meta_path.name} beside {path}: the expected SHA-256 is unknown, refusing to load"
        )
    try:
        metadata = json.loads(meta_path.read_text())
        expected = str(metadata["sha256"]).lower()
    except (ValueError, KeyError) as exc:
        raise WeightsIntegrityError(f"{meta_path} is not a valid weights sidecar: {exc}") from exc
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsIntegrityError(
            f"SHA-256 mismatch for {path}: expected {expected}, file has {actual} "
            "(corrupt or replaced weights; refusing to load)"
        )
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsIntegrityError(f"cannot read {path} as safetensors: {exc}") from exc
    return LoadedWeights(state, metadata, actual)
