"""Compare medret's 320-px canvases with CXR-RePaiR's and CheXzero's (runs in medret's venv, Pillow 13).

For every image of the manifest: ``medret.imaging.decode_to_canvas(path, 320)`` (exact) and with ``fast=True``,
against the canvases ``reference_canvases.py`` saved with their code under Pillow 9.x:
(a) CXR-RePaiR (PIL decode) and (b) CheXzero (cv2 decode). Each comparison gives the number of differing pixels and
the largest absolute difference.

Three diagnostics say where a difference would come from:
* ``decode``: this Pillow's decode of the file against the reference Pillow's (``NAME.pil9.npy``);
* ``cv2``: CheXzero's cv2 decode against the reference Pillow's (grey sources compared on every channel);
* ``lanczos``: CXR-RePaiR's own ``preprocess`` run here, under this Pillow, on the pixels the reference Pillow
  decoded, against (a). Only the resampler (and the paste) differ between the two, so 0 means this Pillow's Lanczos
  gives the same bytes as the reference Pillow's. Pillow 10 removed ``Image.ANTIALIAS``; this script puts the name
  back on ``PIL.Image`` as the alias it was (``Image.LANCZOS``), in this process only. Their file is not changed;
* ``L first``: the same, on the source converted to L first (medret's order), against medret's exact canvas: for an
  RGB source this isolates the order of the RGB->L conversion and the resize.

One more column tries a remedy: ``H-then-V``, medret's exact canvas rebuilt here with the resize split into two
one-axis Lanczos resizes, horizontal then vertical (the pass order of Pillow < 13 for every size; Pillow 13 runs the
vertical pass first when the height shrinks by more than twice as many pixels as the width,
python-pillow/Pillow#9549), against (a).

And one column follows the image into the model: ``model input``, medret's CXR-RePaiR/CheXzero preprocessing
(``medret.models.clip_family.cxr_preprocess``: rebuild their 320-px canvas from the cached box and the source size,
normalise, bicubic to 224) on medret's exact canvas, against the same function on (a) given as a full 320 x 320
box. For a source no larger than 320 the cache keeps the source's own pixels and that function enlarges them with
Lanczos as their code does, so this is where medret's claim for small sources is tested.

Exit status 1 if, for a greyscale JPEG/PNG, medret differs from (a) under the gate, else 0:
``--gate canvas`` (default): the exact canvas differs from (a), for any source size;
``--gate claim``: medret's documented claim: the exact canvas for sources larger than 320 px, the model input for
the others.

    python compare_medret.py --images DIR --ref DIR --repair CLONE [--gate canvas|claim] [--json F] [--markdown F]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import PIL
from PIL import Image, features

from medret.imaging import canvas_size, decode_to_canvas

SIZE = 320


def import_file(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def diff(x: np.ndarray, y: np.ndarray) -> dict[str, int]:
    """Differing elements and max |x - y| of two equal-shape uint8 arrays (a shape mismatch is reported as such)."""
    if x.shape != y.shape:
        return {"n": -1, "max": -1, "shapes": f"{x.shape} vs {y.shape}"}
    d = np.abs(x.astype(np.int16) - y.astype(np.int16))
    return {"n": int((d != 0).sum()), "max": int(d.max()), "mean": round(float(d.mean()), 4)}


def exact_h_then_v(path: Path) -> np.ndarray:
    """medret's exact canvas (decode, convert to L, fit, centre), with the Lanczos resize as two one-axis passes."""
    with Image.open(path) as img:
        grey = img.convert("L")
    w, h = grey.size
    nw, nh = canvas_size(w, h, SIZE)
    if nw != w:
        grey = grey.resize((nw, h), Image.Resampling.LANCZOS)
    if nh != h:
        grey = grey.resize((nw, nh), Image.Resampling.LANCZOS)
    canvas = np.zeros((SIZE, SIZE), dtype=np.uint8)
    top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
    canvas[top : top + nh, left : left + nw] = np.asarray(grey)
    return canvas


def model_input_diff(exact: np.ndarray, box: tuple, source_hw: tuple, a: np.ndarray) -> dict[str, int] | None:
    """medret's CXR-RePaiR/CheXzero network input (224 x 224, one channel) from its cache entry vs from (a), in grey
    levels (normalised difference times their std 83.44); None if medret's function cannot be imported."""
    try:
        import torch

        from medret.models.clip_family import CXR_STD, cxr_preprocess
    except ImportError:
        return None
    ours = cxr_preprocess(torch.from_numpy(exact)[None], torch.tensor([box]), torch.tensor([source_hw]))
    theirs = cxr_preprocess(torch.from_numpy(a)[None], torch.tensor([[0, 0, SIZE, SIZE]]), torch.tensor([[SIZE] * 2]))
    d = (ours[:, 0] - theirs[:, 0]).abs() * CXR_STD  # one channel (the three are copies), in grey levels
    return {"n": int((d != 0).sum()), "max": round(float(d.max()), 3), "mean": round(float(d.mean()), 4)}


def cell(d: dict[str, int] | None) -> str:
    if d is None:
        return "n/a"
    if d["n"] < 0:
        return f"shape {d['shapes']}"
    return "0" if d["n"] == 0 else f"{d['n']} px (max {d['max']}, mean {d['mean']:.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="directory with manifest.json")
    parser.add_argument("--ref", type=Path, required=True, help="reference_canvases.py's output directory")
    parser.add_argument("--repair", type=Path, required=True, help="CXR-RePaiR clone (for the lanczos diagnostic)")
    parser.add_argument("--gate", choices=("canvas", "claim"), default="canvas")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    # The diagnostic's only concession to Pillow >= 10: the removed alias, restored to what it was.
    if not hasattr(Image, "ANTIALIAS"):
        Image.ANTIALIAS = Image.Resampling.LANCZOS
    repair = import_file("cxr_repair_bootstrap", args.repair / "data_preprocessing/create_bootstrapped_testset.py")

    reference = json.loads((args.ref / "reference.json").read_text())
    manifest = json.loads((args.images / "manifest.json").read_text())
    rows, failures = [], []
    for entry in manifest:
        name, path = entry["name"], args.images / entry["file"]
        exact, box, source_hw = decode_to_canvas(path, SIZE)
        fast, fast_box, _ = decode_to_canvas(path, SIZE, fast=True)
        a = np.load(args.ref / f"{name}.a.npy")
        b = np.load(args.ref / f"{name}.b.npy")
        pil9 = np.load(args.ref / f"{name}.pil9.npy")
        cv2_rgb = np.load(args.ref / f"{name}.cv2.npy")

        with Image.open(path) as src:
            here = np.asarray(src)
        grey_as_rgb = pil9 if pil9.ndim == 3 else np.repeat(pil9[..., None], 3, axis=-1)
        lanczos_here = np.asarray(repair.preprocess(Image.fromarray(pil9), SIZE))
        # Their preprocess on the source converted to L first (medret's order): for an RGB source, 0 against
        # medret's exact canvas pins any exact-vs-(a) difference on the order of RGB->L and the resize.
        l_first_here = np.asarray(repair.preprocess(Image.fromarray(pil9).convert("L"), SIZE))

        row = {
            "name": name,
            "file": entry["file"],
            "size": f"{entry['width']}x{entry['height']}",
            "kind": f"{entry['format']} {entry['mode']}" + (" progressive" if entry["progressive"] else ""),
            "box": list(box),  # medret's content box (top, left, height, width)
            "fast_box": list(fast_box),
            "exact_vs_a": diff(exact, a),
            "exact_vs_b": diff(exact, b),
            "fast_vs_a": diff(fast, a),
            "fast_vs_b": diff(fast, b),
            "a_vs_b": diff(a, b),
            "decode_here_vs_ref": diff(here, pil9),
            "cv2_vs_pil_ref": diff(cv2_rgb, grey_as_rgb),
            "lanczos_here_vs_a": diff(lanczos_here, a),
            "l_first_here_vs_exact": diff(l_first_here, exact),
            "h_then_v_vs_a": diff(exact_h_then_v(path), a),
            "model_input_vs_a": model_input_diff(exact, box, source_hw, a),
        }
        rows.append(row)
        key = "exact_vs_a"
        if args.gate == "claim" and max(entry["width"], entry["height"]) <= SIZE:
            key = "model_input_vs_a"
        if entry["mode"] == "L" and (row[key] is None or row[key]["n"] != 0):
            failures.append(name)

    header = (
        "| file | size | kind | exact vs (a) | exact vs (b) | fast vs (a) | (a) vs (b) "
        "| decode: Pillow here vs ref | decode: cv2 vs Pillow ref | Lanczos: Pillow here vs ref "
        "| their code, L first, vs exact | exact with H-then-V passes vs (a) "
        "| model input, 224 px, in grey levels: medret vs from (a) |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        cells = [r["file"], r["size"], r["kind"]] + [
            cell(r[k])
            for k in (
                "exact_vs_a",
                "exact_vs_b",
                "fast_vs_a",
                "a_vs_b",
                "decode_here_vs_ref",
                "cv2_vs_pil_ref",
                "lanczos_here_vs_a",
                "l_first_here_vs_exact",
                "h_then_v_vs_a",
                "model_input_vs_a",
            )
        ]
        lines.append("| " + " | ".join(cells) + " |")
    versions = (
        f"reference: Pillow {reference['Pillow']} (libjpeg-turbo {reference['Pillow libjpeg-turbo']}), "
        f"opencv {reference['opencv']} ({reference['opencv JPEG'].split(':', 1)[1].strip()}), "
        f"numpy {reference['numpy']}\n"
        f"medret:    Pillow {PIL.__version__} (libjpeg-turbo {features.version_feature('libjpeg_turbo')}), "
        f"numpy {np.__version__}, Python {sys.version.split()[0]}"
    )
    table = "\n".join(lines)
    print(versions)
    print()
    print(table)

    if args.json:
        here = {"Pillow": PIL.__version__, "libjpeg-turbo": features.version_feature("libjpeg_turbo")}
        payload = {"reference": reference, "medret": here, "gate": args.gate, "failures": failures, "rows": rows}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(versions + "\n\n" + table + "\n")

    print()
    if failures:
        print(f"medret differs from CXR-RePaiR's canvas (a) (gate: {args.gate}): {', '.join(failures)}")
        return 1
    print(f"medret equals CXR-RePaiR's canvas (a) for every greyscale file (gate: {args.gate})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
