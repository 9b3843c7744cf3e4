"""The toy family's adapter: deterministic features, no weights."""

import hashlib

import torch
import torch.nn.functional as F

from medret.models.base import ModelAdapter


class ToyAdapter(ModelAdapter):
    """Image: the mean grey level of each cell of a grid over the content box. Text: hashed word counts."""

    family = "toy"

    def __init__(self, entry):
        super().__init__(entry)
        self.grid, self.scale = int(entry["grid"]), float(entry["scale"])

    @property
    def embed_dim(self) -> int:
        return self.grid * self.grid

    def _encode_images(self, images, boxes, sizes):
        out = []
        for image, (top, left, h, w) in zip(images, boxes.tolist(), strict=True):
            crop = image[top : top + h, left : left + w].float()[None, None]
            out.append(F.adaptive_avg_pool2d(crop, self.grid).flatten() - crop.mean())
        return torch.stack(out)

    def _encode_texts(self, texts):
        out = torch.zeros(len(texts), self.embed_dim)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.embed_dim] += self.scale
        return out
