"""Augmented views of a captured frame, so each sample contributes several embeddings.

Views are made from the frame with the same preprocessing as inference (:func:`preprocess`):
the frame itself first, then its mirror image, then zoomed crops around the centre and the
corners. Inference always embeds just the frame::

    aug = Augmentation(flip=True, crops=2)
    pixels = aug.views(frame, backbone.input_size, "crop")   # 4 model-sized frames
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from edge_classifier.frames.images import Resample, preprocess

# Where zoomed crops are centred, as fractions of the free margin: centre, then the corners.
_CROP_ANCHORS = ((0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0))


@dataclass(frozen=True)
class Augmentation:
    """Which extra views each sample gets.

    :param flip: add the horizontally mirrored frame.
    :param crops: number of zoomed crops (0 to 5), each ``crop_scale`` of the frame's side.
    """

    flip: bool = True
    crops: int = 0
    crop_scale: float = 0.8

    def __post_init__(self):
        if not 0 <= self.crops <= len(_CROP_ANCHORS):
            raise ValueError(f"crops must be between 0 and {len(_CROP_ANCHORS)}, not {self.crops}")
        if not 0.3 <= self.crop_scale < 1.0:
            raise ValueError(f"crop_scale must be in [0.3, 1), not {self.crop_scale}")

    @property
    def count(self) -> int:
        """Views per sample, the frame included."""
        return 1 + int(self.flip) + self.crops

    def key(self) -> str:
        return f"f{int(self.flip)}c{self.crops}s{self.crop_scale:g}"

    def views(self, rgb: np.ndarray, size: Tuple[int, int], mode: str,
              resample: Optional[Resample] = None) -> List[np.ndarray]:
        """Model-sized uint8 frames: the frame, then the augmented views (resized by
        ``resample``, see :func:`preprocess`)."""
        base = preprocess(rgb, size, mode, resample)
        out = [base]
        if self.flip:
            out.append(np.ascontiguousarray(base[:, ::-1]))
        height, width = rgb.shape[:2]
        ch, cw = max(1, round(height * self.crop_scale)), max(1, round(width * self.crop_scale))
        for ax, ay in _CROP_ANCHORS[: self.crops]:
            top, left = round((height - ch) * ay), round((width - cw) * ax)
            out.append(preprocess(rgb[top:top + ch, left:left + cw], size, mode, resample))
        return out


def embed_views(backbone, rgb: np.ndarray, augmentation: Augmentation) -> np.ndarray:
    """VxD embeddings of a frame's views (row 0: the frame itself)."""
    frames = augmentation.views(rgb, backbone.input_size, backbone.resize, backbone.resample)
    return np.stack([backbone.run_prepared(f).embedding for f in frames]).astype(np.float32)
