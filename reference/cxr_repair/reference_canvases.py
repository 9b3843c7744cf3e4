"""Their 320 x 320 canvases, computed with their own, unpatched code (runs in the reference venv, Pillow 9.x).

(a) CXR-RePaiR: ``data_preprocessing/create_bootstrapped_testset.py``: ``preprocess(Image.open(path), 320)``, the
    call its ``img_to_hdf5`` makes for the test set (``mimic_data_preprocess.py`` has a byte-identical copy).
(b) CheXzero: ``data_process.py``: ``cv2.imread`` -> ``cv2.cvtColor(BGR2RGB)`` -> ``Image.fromarray`` ->
    ``preprocess(img, desired_size=320)``, the body of its ``img_to_hdf5``.

Both modules are imported from the clones as they are (CheXzero's imports torch, torchvision, matplotlib and cv2 at
module level, so the venv has them). Each canvas is computed twice: by calling ``preprocess`` directly, and by
running each repository's own ``img_to_hdf5`` on the whole list, which writes the float32 HDF5 dataset ``cxr`` the
models were trained or tested on. The two must agree; the direct one is saved.

Outputs in OUT_DIR, per image NAME:
    NAME.a.npy      (320, 320) uint8, CXR-RePaiR's canvas
    NAME.b.npy      (320, 320) uint8, CheXzero's canvas
    NAME.pil9.npy   the source as this Pillow decodes it (np.asarray(Image.open(path)), L or RGB)
    NAME.cv2.npy    the source as CheXzero's cv2 path decodes it (RGB, after cvtColor)
and reference.json: library versions, commits, whether the preprocess copies are identical, checks.

    python reference_canvases.py --repair CLONE --chexzero CLONE --images DIR --out DIR
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import inspect
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import cv2
import h5py
import numpy as np
import PIL
from PIL import Image, features

SIZE = 320


def import_file(name: str, path: Path) -> ModuleType:
    """Import a module from a file path, unmodified (the way ``python path`` would load it, minus ``__main__``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def body_dump(func: object) -> str:
    """The function's body as an AST dump: equal for copies that differ only in comments, defaults or blank lines."""
    tree = ast.parse(inspect.getsource(func))
    return ast.dump(ast.Module(body=tree.body[0].body, type_ignores=[]))


def git_head(repo: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "log", "-1", "--format=%H %cd", "--date=short"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def as_uint8(img: Image.Image) -> np.ndarray:
    assert img.mode == "L" and img.size == (SIZE, SIZE), (img.mode, img.size)
    return np.asarray(img, dtype=np.uint8)


def h5_canvases(path: Path) -> np.ndarray:
    """Read their float32 ``cxr`` dataset back as uint8, checking the values are whole grey levels."""
    with h5py.File(path, "r") as f:
        data = f["cxr"][:]
    assert data.dtype == np.float32 and np.all(data == np.round(data)) and data.min() >= 0 and data.max() <= 255
    return data.astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repair", type=Path, required=True, help="CXR-RePaiR clone")
    parser.add_argument("--chexzero", type=Path, required=True, help="CheXzero clone")
    parser.add_argument("--images", type=Path, required=True, help="directory with manifest.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    # Their modules, from the clones, as they are.
    repair = import_file("cxr_repair_bootstrap", args.repair / "data_preprocessing/create_bootstrapped_testset.py")
    repair_train = import_file("cxr_repair_mimic", args.repair / "data_preprocessing/mimic_data_preprocess.py")
    sys.path.insert(0, str(args.chexzero))  # CheXzero's scripts import each other from the repository root
    import data_process as chexzero  # CheXzero's module, imported as it is

    manifest = json.loads((args.images / "manifest.json").read_text())
    paths = [args.images / m["file"] for m in manifest]

    checks: dict[str, object] = {}
    for entry, path in zip(manifest, paths, strict=True):
        name = entry["name"]
        # (a) CXR-RePaiR: PIL opens the file (mode L for a grey JPEG/PNG) and preprocess() resizes and pastes.
        a = as_uint8(repair.preprocess(Image.open(path), SIZE))
        # (b) CheXzero: the four lines inside its img_to_hdf5's try block.
        img = cv2.imread(str(path))
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        img_pil = Image.fromarray(img)
        b = as_uint8(chexzero.preprocess(img_pil, desired_size=SIZE))
        np.save(args.out / f"{name}.a.npy", a)
        np.save(args.out / f"{name}.b.npy", b)
        # The decoded sources, for telling decoder differences from resampler differences on medret's side.
        with Image.open(path) as src:
            np.save(args.out / f"{name}.pil9.npy", np.asarray(src))
        np.save(args.out / f"{name}.cv2.npy", img)
        print(f"{name:20s} a: mean {a.mean():7.3f}   b: mean {b.mean():7.3f}   a != b: {int((a != b).sum()):6d} px")

    # The same list through each repository's own HDF5 writer: it must give the canvases saved above.
    repair.img_to_hdf5([str(p) for p in paths], str(args.out / "repair_cxr.h5"), resolution=SIZE)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # CheXzero reports (and swallows) failures on stdout
        chexzero.img_to_hdf5(paths, str(args.out / "chexzero_cxr.h5"), resolution=SIZE)
    print(log.getvalue().strip())
    assert log.getvalue().startswith(f"0 / {len(paths)} images failed"), log.getvalue()
    for key, h5name in (("a", "repair_cxr.h5"), ("b", "chexzero_cxr.h5")):
        stored = h5_canvases(args.out / h5name)
        for i, entry in enumerate(manifest):
            assert np.array_equal(stored[i], np.load(args.out / f"{entry['name']}.{key}.npy")), (h5name, entry)
        checks[f"{key}_img_to_hdf5_equals_direct"] = True
        (args.out / h5name).unlink()

    checks["preprocess_bodies_identical"] = {
        "CXR-RePaiR create_bootstrapped_testset == mimic_data_preprocess": body_dump(repair.preprocess)
        == body_dump(repair_train.preprocess),
        "CXR-RePaiR == CheXzero": body_dump(repair.preprocess) == body_dump(chexzero.preprocess),
    }
    with warnings.catch_warnings():  # Pillow 9.5 warns on every ANTIALIAS access (their code gets it too)
        warnings.simplefilter("ignore", DeprecationWarning)
        antialias = repr(Image.ANTIALIAS)
    jpeg_line = next(line.strip() for line in cv2.getBuildInformation().splitlines() if "JPEG:" in line)
    info = {
        "python": sys.version.split()[0],
        "Pillow": PIL.__version__,
        "Pillow libjpeg-turbo": features.version_feature("libjpeg_turbo"),
        "Pillow zlib": features.version("zlib"),
        "opencv": cv2.__version__,
        "opencv JPEG": jpeg_line,
        "numpy": np.__version__,
        "Image.ANTIALIAS": antialias,
        "CXR-RePaiR": git_head(args.repair),
        "CheXzero": git_head(args.chexzero),
        "checks": checks,
    }
    (args.out / "reference.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
