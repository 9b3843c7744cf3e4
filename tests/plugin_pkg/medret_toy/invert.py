"""The invert corruption: each content box blended with its inverse; the strength is the spec row's."""


def apply(kind, images, boxes, rows, entry):
    out = images.clone()
    for i, ((top, left, h, w), strength) in enumerate(zip(boxes.tolist(), rows["strength"].tolist(), strict=True)):
        if strength != strength:  # NaN: severity 0, the clean image
            continue
        crop = out[i, top : top + h, left : left + w].float()
        out[i, top : top + h, left : left + w] = ((1 - strength) * crop + strength * (255 - crop)).round().byte()
    return out
