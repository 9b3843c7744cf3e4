"""The ViT-B/32 QuickGELU architecture and OpenAI's fp16 state dict: CLIP files as published."""

from __future__ import annotations

from collections import OrderedDict

import open_clip
import torch

ARCH = "ViT-B-32-quickgelu"


def openai_fp16(model: torch.nn.Module) -> OrderedDict[str, torch.Tensor]:
    """State dict with OpenAI's ``convert_weights`` fp16 subset, as saved after ``clip.load`` on a GPU."""
    open_clip.model.convert_weights_to_lp(model, dtype=torch.float16)
    state = OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    model.float()
    return state
