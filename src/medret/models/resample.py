"""Pillow-exact resampling on the cached tensors, shared by the families whose original code resizes with Pillow.

CXR-CLIP and BioViL both crop the source, ``Resize(n)`` it with Pillow's 8-bit bilinear filter (torchvision on a PIL
image) and ``CenterCrop`` it; :func:`resize_center_crop` does that in exact integer arithmetic on any device.
"""

from __future__ import annotations

import functools
import math

import torch


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)``: the shorter side becomes ``size``, the longer ``int(size * long / short)``."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


@functools.lru_cache(maxsize=64)
def pil_bilinear_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's 8-bit bilinear filter along one axis (``Resample.c``: precompute_coeffs, normalize_coeffs_8bpc).

    Returns, per output pixel, the input indices (out_size, ksize) and the fixed-point coefficients (int32, scaled
    by 2**22; 0 for unused taps). The float64 steps follow the C code operation by operation.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # bilinear support 1
    ksize = math.ceil(support) * 2 + 1
    center = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    xmin = torch.trunc(center - support + 0.5).clamp(min=0).long()  # C (int) truncates, then max(0, .)
    count = torch.trunc(center + support + 0.5).long().clamp(max=in_size) - xmin
    weights = torch.zeros(out_size, ksize, dtype=torch.float64)
    total = torch.zeros(out_size, dtype=torch.float64)
    for x in range(ksize):  # sequential sum, as in C
        arg = (((x + xmin).double() - center) + 0.5) * (1.0 / filterscale)
        w = torch.where((x < count) & (arg.abs() < 1.0), 1.0 - arg.abs(), 0.0)
        weights[:, x] = w
        total = total + w
    weights = torch.where(total[:, None] != 0.0, weights / torch.where(total == 0.0, 1.0, total)[:, None], weights)
    coeffs = torch.floor(0.5 + weights * float(1 << 22)).to(torch.int32)
    index = (xmin[:, None] + torch.arange(ksize)[None]).clamp(max=in_size - 1)
    return index, coeffs


def _resample(x: torch.Tensor, index: torch.Tensor, coeffs: torch.Tensor, dim: int) -> torch.Tensor:
    """One 8-bit Pillow pass along ``dim`` (-1 or -2) of int32 grey levels (integer arithmetic, as in C)."""
    index, coeffs = index.to(x.device), coeffs.to(x.device)
    shape = (-1,) if dim == -1 else (-1, 1)
    acc = torch.index_select(x, dim, index[:, 0]) * coeffs[:, 0].view(shape)
    for t in range(1, index.shape[1]):  # one tap at a time keeps the temporaries small
        acc.add_(torch.index_select(x, dim, index[:, t]) * coeffs[:, t].view(shape))  # < 255 * 2**22 < 2**31
    return ((acc + (1 << 21)) >> 22).clamp_(0, 255)  # clip8: + one half, >> PRECISION_BITS


def pil_resize_crop(x: torch.Tensor, new_h: int, new_w: int, rows: slice, cols: slice) -> torch.Tensor:
    """``Image.resize((new_w, new_h), BILINEAR)`` of uint8 images (n, h, w), then ``[rows, cols]``, as int32.

    Pillow's two-pass order (horizontal, then vertical, each rounded to 8 bits); only the pixels inside the crop
    are computed. Exact integer arithmetic, so the result is the same on every device.
    """
    h, w = x.shape[-2:]
    y = x.to(torch.int32)
    if new_w != w:
        index, coeffs = pil_bilinear_taps(w, new_w)
        y = _resample(y, index[cols], coeffs[cols], dim=-1)
    else:
        y = y[..., cols]
    if new_h != h:
        index, coeffs = pil_bilinear_taps(h, new_h)
        y = _resample(y, index[rows], coeffs[rows], dim=-2)
    else:
        y = y[..., rows, :]
    return y


def resize_center_crop(images: torch.Tensor, boxes: torch.Tensor, *, resize: int, crop: int) -> torch.Tensor:
    """uint8 canvases (B, S, S) + content boxes -> (B, 1, crop, crop) float32 in [0, 1].

    Crop each canvas to its box, ``Resize(resize)`` (Pillow's 8-bit bilinear, exact), ``CenterCrop(crop)``
    (torchvision, half-even rounding of the offsets), /255. Only the pixels inside the crop are computed, and
    images sharing a box are resized together.
    """
    canvas = images.shape[-1]
    out = torch.empty(len(images), 1, crop, crop, device=images.device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, box in enumerate(boxes.tolist()):
        groups.setdefault(tuple(int(v) for v in box), []).append(i)
    for (top, left, height, width), idx in groups.items():
        if height < 1 or width < 1 or top < 0 or left < 0 or top + height > canvas or left + width > canvas:
            raise ValueError(f"content box {(top, left, height, width)} outside the {canvas}-pixel canvas")
        new_h, new_w = resized_size(height, width, resize)
        if new_h < crop or new_w < crop:  # cannot happen with resize >= crop; torchvision would pad
            raise ValueError(f"resized content {new_h}x{new_w} smaller than the {crop}-pixel crop")
        ct, cl = round((new_h - crop) / 2.0), round((new_w - crop) / 2.0)  # torchvision center_crop
        rows, cols = slice(ct, ct + crop), slice(cl, cl + crop)
        chunk = max(1, (1 << 22) // (height * crop))  # bounds the (n, h, crop) int32 temporaries
        for start in range(0, len(idx), chunk):
            part = idx[start : start + chunk]
            piece = images[part, top : top + height, left : left + width]
            out[part, 0] = pil_resize_crop(piece, new_h, new_w, rows, cols).float().div_(255.0)
    return out
