"""Load the real trainer's checkpoint through medret and compare its embeddings with CXR-CLIP's (run in MEDRET's venv).

The model is built with the public entry point, ``medret.models.load_model({"family": "cxr_clip", ...})``, exactly
as a config entry would. Images are embedded the way the image cache feeds them: ``medret.imaging.decode_to_canvas``
then ``encode_images(canvas, box)``. The canvas side is each image's longer side, so the cache stores the file's
pixels unchanged (no resampling before medret's own preprocessing) and both pipelines start from the same pixels;
that is the pass/fail comparison. Cache sizes 224 and 512, where the cache resamples first (Lanczos), are printed too,
for information only: there the inputs differ by design.

Checks (exit status 1 if any fails, 2 if medret refuses the file):

* every image and every report: cosine(medret, CXR-CLIP) >= 0.9999 (embeddings are L2-normalised on both sides);
* and max |medret - CXR-CLIP| <= 1e-5. The cosine alone is a weak test here: random towers map all these
  radiograph-like images to nearly the same direction (two *different* images reach cosine 0.9995 with the random
  ResNet-50), so the yardstick below is printed with every run.

Diagnostics printed alongside (not pass/fail; they use adapter internals that may change): the network input pixels
(``medret.models.cxr_clip.preprocess`` vs the evaluator's tensors) and the token ids/masks (medret's tokeniser vs the
transformers 4.26.1 ``BertTokenizerFast``). As a yardstick for the threshold, the closest pair of *different* inputs
in the reference embeddings is printed too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medret.imaging import decode_to_canvas
from medret.models import load_model

THRESHOLD = 0.9999  # cosine, per input
MAX_ABS_DIFF = 1e-5  # per input, largest |medret - CXR-CLIP| over the 512 components (measured: about 1e-7)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine (rows renormalised, so the check does not depend on either side's normalisation)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def closest_other_pair(emb: np.ndarray) -> tuple[float, float]:
    """How close a wrong answer can come: the largest cosine and the smallest max |difference| between the
    embeddings of two different inputs."""
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    diff = np.abs(emb[:, None, :] - emb[None, :, :]).max(axis=-1)
    np.fill_diagonal(diff, np.inf)
    return float(sim.max()), float(diff.min())


def embed_images(model, paths: list[str], size_of) -> np.ndarray:
    """medret's embedding of each image from a cache canvas of side ``size_of(height, width)``."""
    out = []
    for path in paths:
        with Image.open(path) as im:
            w, h = im.size
        canvas, box, source = decode_to_canvas(path, size_of(h, w))  # as the image cache stores it
        batch = torch.from_numpy(canvas)[None]
        out.append(model.encode_images(batch, torch.tensor([box]), torch.tensor([source])).numpy()[0])
    return np.stack(out)


def diagnostics(model, inputs: dict, ref: dict, test: Path) -> dict:
    """Pixel and token comparisons through adapter internals (best effort; reported, never fatal)."""
    out: dict = {}
    try:
        from medret.models import cxr_clip as cxr

        diffs = []
        for i, im in enumerate(inputs["images"]):
            canvas, box = decode_to_canvas(test / im["file"], max(im["height"], im["width"]))[:2]
            pixels = cxr.preprocess(torch.from_numpy(canvas)[None], torch.tensor([box]), model.mean, model.std)
            d = (pixels[0].numpy() - ref["pixels"][i]).astype(np.float64)
            std = np.asarray(model.std, dtype=np.float64).reshape(3, 1, 1)
            grey_levels = np.abs(d) * std * 255.0  # the difference before normalisation, in 8-bit grey levels
            diffs.append(
                {
                    "image": im["name"],
                    "differing_values": int((d != 0).sum()),
                    "max_grey_levels": float(grey_levels.max()),
                }
            )
        out["pixels"] = diffs
    except Exception as exc:  # internals changed: report and go on
        out["pixels"] = f"not compared ({type(exc).__name__}: {exc})"
    try:
        ids, mask, _ = model.tokenizer(inputs["reports"])
        same_shape = tuple(ids.shape) == ref["input_ids"].shape
        out["tokens"] = {
            "shape_medret": list(ids.shape),
            "shape_reference": list(ref["input_ids"].shape),
            "ids_equal": bool(same_shape and np.array_equal(ids.numpy(), ref["input_ids"])),
            "masks_equal": bool(same_shape and np.array_equal(mask.numpy(), ref["attention_mask"])),
        }
    except Exception as exc:
        out["tokens"] = f"not compared ({type(exc).__name__}: {exc})"
    return out


def negative_controls(model, paths: list[str], reports: list[str], ref: dict) -> dict:
    """Would the check notice small mistakes? Embeddings with one deliberate change each, against the reference.

    Best effort through adapter internals (``mean``/``std``, ``model.pooling``); restored afterwards; never fatal.
    """
    out: dict = {}

    def score(ours: np.ndarray, theirs: np.ndarray) -> dict:
        cos, diff = cosine_rows(ours, theirs), np.abs(ours - theirs).max(axis=1)
        caught = bool((cos < THRESHOLD).any() or (diff > MAX_ABS_DIFF).any())
        return {"min_cosine": float(cos.min()), "max_abs_diff": float(diff.max()), "caught": caught}

    try:  # the other family's normalisation (ImageNet <-> 0.5/0.5)
        mean, std = model.mean, model.std
        swap = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if mean[0] != 0.5 else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        model.mean, model.std = swap
        try:
            out["other normalisation"] = score(embed_images(model, paths, lambda h, w: max(h, w)), ref["image_emb"])
        finally:
            model.mean, model.std = mean, std
    except Exception as exc:
        out["other normalisation"] = f"not run ({type(exc).__name__}: {exc})"
    try:  # the content box shifted by one pixel (a crop off by one)
        ours = []
        for path in paths:
            with Image.open(path) as im:
                w, h = im.size
            canvas, box = decode_to_canvas(path, max(h, w) + 1)[:2]
            top, left, bh, bw = box
            shifted = torch.tensor([[top, left + 1, bh, bw]])
            ours.append(model.encode_images(torch.from_numpy(canvas)[None], shifted).numpy()[0])
        out["crop one pixel off"] = score(np.stack(ours), ref["image_emb"])
    except Exception as exc:
        out["crop one pixel off"] = f"not run ({type(exc).__name__}: {exc})"
    try:  # [CLS] pooling instead of the [SEP] ("eos") token
        pooling = model.model.pooling
        model.model.pooling = "bos" if pooling != "bos" else "eos"
        try:
            out["bos pooling"] = score(model.encode_texts(reports).numpy(), ref["text_emb"])
        finally:
            model.model.pooling = pooling
    except Exception as exc:
        out["bos pooling"] = f"not run ({type(exc).__name__}: {exc})"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--text-model", type=Path, required=True, help="the local BERT directory (vocab.txt, config)")
    parser.add_argument("--test", type=Path, required=True, help="the test directory written by prepare.py")
    parser.add_argument("--reference", type=Path, required=True, help="the directory reference_embed.py wrote to")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()

    inputs = json.loads((args.test / "inputs.json").read_text(encoding="utf-8"))
    ref = dict(np.load(args.reference / "reference.npz"))
    entry = {"family": "cxr_clip", "checkpoint": str(args.checkpoint), "text_model": str(args.text_model)}
    entry |= {"device": "cpu", "batch_size": 64}
    start = time.perf_counter()
    try:
        model = load_model(entry, name="cxr_clip_reference")
    except Exception as exc:  # MedretError expected while the loader cannot read Hydra-written files
        print(f"medret REFUSED the checkpoint ({type(exc).__module__}.{type(exc).__name__}):\n  {exc}")
        if args.json:
            args.json.write_text(json.dumps({"load_error": f"{type(exc).__name__}: {exc}"}, indent=1), "utf-8")
        return 2
    load_s = time.perf_counter() - start
    dropped = getattr(model, "dropped_keys", None)
    print(
        f"medret loaded {args.checkpoint.name} in {load_s:.1f} s; dropped (recomputed buffers): "
        f"{len(dropped) if dropped is not None else '?'}"
    )

    paths = [str(args.test / im["file"]) for im in inputs["images"]]
    names = [im["name"] for im in inputs["images"]]
    image_emb = embed_images(model, paths, lambda h, w: max(h, w))
    text_emb = model.encode_texts(inputs["reports"]).numpy()

    rows, failed = [], False
    for kind, labels, ours, theirs in (
        ("image", names, image_emb, ref["image_emb"]),
        ("text", [f"report {i}: {r[:40]!r}" for i, r in enumerate(inputs["reports"])], text_emb, ref["text_emb"]),
    ):
        cos = cosine_rows(ours, theirs)
        diff = np.abs(ours - theirs).max(axis=1)
        for label, c, d in zip(labels, cos, diff, strict=True):
            ok = bool(c >= THRESHOLD and d <= MAX_ABS_DIFF)
            failed |= not ok
            rows.append({"kind": kind, "input": label, "cosine": float(c), "max_abs_diff": float(d), "ok": ok})

    print(f"\n{'kind':5s}  {'input':52s} {'cosine':>12s} {'max|diff|':>10s}")
    for r in rows:
        flag = "" if r["ok"] else f"   FAIL (cosine < {THRESHOLD} or max|diff| > {MAX_ABS_DIFF})"
        print(f"{r['kind']:5s}  {r['input']:52s} {r['cosine']:12.9f} {r['max_abs_diff']:10.2e}{flag}")
    yardstick = {"images": closest_other_pair(ref["image_emb"]), "texts": closest_other_pair(ref["text_emb"])}
    print(
        "\nyardstick, the closest pair of different inputs in the reference: "
        + "; ".join(f"{k} cosine {c:.6f}, max|diff| {d:.2e}" for k, (c, d) in yardstick.items())
    )

    info = {}
    for size in (224, 512):  # the cache resamples first (Lanczos): a different input by design, for information
        cos = cosine_rows(embed_images(model, paths, lambda h, w, s=size: s), ref["image_emb"])
        info[size] = dict(zip(names, map(float, cos), strict=True))
        print(
            f"information only, cache size {size}: cosines " + ", ".join(f"{n}={c:.5f}" for n, c in info[size].items())
        )

    diag = diagnostics(model, inputs, ref, args.test)
    print("\ndiagnostics (not pass/fail):")
    if isinstance(diag["pixels"], list):
        worse = [
            f"{p['image']}: {p['differing_values']} values, <= {p['max_grey_levels']:.2f} grey levels"
            for p in diag["pixels"]
            if p["differing_values"]
        ]
        print(
            f"  network input (3x224x224) identical to the evaluator's for "
            f"{len(diag['pixels']) - len(worse)}/{len(diag['pixels'])} images" + "".join(f"\n    {w}" for w in worse)
        )
    else:
        print(f"  pixels: {diag['pixels']}")
    if isinstance(diag["tokens"], dict):
        t = diag["tokens"]
        print(
            f"  token ids equal: {t['ids_equal']}, attention masks equal: {t['masks_equal']} "
            f"(shape medret {t['shape_medret']}, reference {t['shape_reference']})"
        )
    else:
        print(f"  tokens: {diag['tokens']}")

    controls = negative_controls(model, paths, inputs["reports"], ref)
    print("negative controls (one deliberate mistake each; the check must catch them):")
    for name, c in controls.items():
        if isinstance(c, dict):
            verdict = "caught" if c["caught"] else "NOT CAUGHT"
            print(f"  {name:22s} min cosine {c['min_cosine']:.6f}, max|diff| {c['max_abs_diff']:.2e}: {verdict}")
        else:
            print(f"  {name:22s} {c}")

    if args.json:
        result = {
            "load_seconds": load_s,
            "rows": rows,
            "yardstick": yardstick,
            "cache_sizes": info,
            "diagnostics": diag,
            "negative_controls": controls,
        }
        args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")

    n_ok = sum(r["ok"] for r in rows)
    print(
        f"\n{'FAIL' if failed else 'PASS'}: {n_ok}/{len(rows)} inputs with cosine >= {THRESHOLD} and "
        f"max|diff| <= {MAX_ABS_DIFF}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
