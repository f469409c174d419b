"""CPU inference: ``Segmenter(...).segment(voxels, spacing) -> uint8 labels``.

The weights are loaded once, verified against their SHA-256 (see :mod:`hippo_scp.model.weights`)
and the network is run in eval mode under ``torch.inference_mode``. Results are deterministic for
a given thread count: the model has no dropout, BatchNorm is folded into the convolutions, and
no random test-time augmentation is used (flip TTA was measured to hurt: the labels are
side-consistent).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch

from hippo_scp.model.network import UNet3D, UNetConfig, fuse_batchnorm
from hippo_scp.model.preprocessing import prepare_volume, restore_labels
from hippo_scp.model.weights import WeightsIntegrityError, load_weights, model_version

__all__ = [
    "Segmenter",
    "WeightsIntegrityError",
    "default_weights_path",
    "predict_labels",
    "segment",
]

WEIGHTS_FILENAME = "hippo_unet.safetensors"


def default_weights_path() -> Path:
    """``$HIPPO_WEIGHTS`` if set, else ``model_weights/hippo_unet.safetensors`` in the repo."""
    env = os.environ.get("HIPPO_WEIGHTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "model_weights" / WEIGHTS_FILENAME


def predict_labels(
    model: torch.nn.Module,
    voxels: np.ndarray,
    spacing_mm: tuple[float, float, float],
    multiple: int,
) -> np.ndarray:
    """Shared by :class:`Segmenter` and training-time validation, so both see one pipeline."""
    prepared = prepare_volume(voxels, spacing_mm, multiple)
    device = next(model.parameters()).device
    x = torch.from_numpy(prepared.array)[None, None].to(device)
    with torch.inference_mode():
        logits = model(x)
        if isinstance(logits, list):
            logits = logits[0]
        scores = torch.softmax(logits, dim=1) if prepared.resampled else logits
        scores_np = scores[0].float().cpu().numpy()
    return restore_labels(scores_np, prepared)


class Segmenter:
    """Loads weights once (safetensors, SHA-256 verified), torch threads configurable."""

    def __init__(self, weights_path: Path | None = None, num_threads: int | None = None) -> None:
        path = Path(weights_path) if weights_path is not None else default_weights_path()
        loaded = load_weights(path)
        meta = loaded.metadata
        try:
            config = UNetConfig.from_dict(meta["architecture"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsIntegrityError(
                f"{path}: sidecar lacks a valid 'architecture': {exc}"
            ) from exc
        # Deep-supervision heads are training-only and are not exported.
        config = UNetConfig(config.in_channels, config.num_classes, config.channels, False)
        model = UNet3D(config)
        if meta.get("fused_batchnorm", False):
            model = fuse_batchnorm(model)
        try:
            model.load_state_dict(loaded.state_dict, strict=True)
        except RuntimeError as exc:
            raise WeightsIntegrityError(f"{path} does not fit its architecture: {exc}") from exc
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if num_threads is not None:
            torch.set_num_threads(int(num_threads))
        self.weights_path = path
        self.config = config
        self.metadata = meta
        self.weights_sha256: str = loaded.sha256
        self.model_version: str = model_version(loaded.sha256)
        self._model = model
        self._lock = threading.Lock()  # one forward at a time: keeps thread use predictable

    def segment(self, voxels: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
        """Label an (X, Y, Z) volume (any intensity scale): uint8 0/1/2, same shape as input."""
        with self._lock:
            return predict_labels(self._model, voxels, spacing_mm, self.config.multiple)


_default: Segmenter | None = None
_default_lock = threading.Lock()


def segment(volume: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Module-level convenience using a cached default :class:`Segmenter`."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Segmenter()
    return _default.segment(volume, spacing_mm)
