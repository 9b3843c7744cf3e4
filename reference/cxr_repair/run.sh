#!/usr/bin/env bash
# Reference check of medret's 320-px image canvas against CXR-RePaiR's and CheXzero's own preprocess() (README.md).
#
#   1. builds a reference venv (Python 3.11, Pillow 9.5.0, opencv-python-headless, what their modules import) and
#      clones CXR-RePaiR and CheXzero;
#   2. writes synthetic radiograph-like JPEGs and PNGs (make_images.py);
#   3. computes their canvases with their unpatched code (reference_canvases.py, reference venv):
#      (a) CXR-RePaiR: PIL.Image.open -> preprocess;  (b) CheXzero: cv2.imread -> RGB -> PIL -> preprocess;
#   4. computes medret's decode_to_canvas(path, 320), exact and fast=True, and compares (compare_medret.py, medret's
#      venv). Exit status non-zero if medret's exact canvas differs from (a) for a greyscale JPEG/PNG in the gate;
#   5. Lanczos sweep (lanczos_sweep.py): the reference Pillow's and medret's Pillow's resize() on 133 source sizes,
#      L and RGB, compared by SHA-256. Informational: it does not change the exit status.
#
# Everything is built under $WORK (outside the repository) and deleted at the end unless KEEP=1.
#
# Environment (all optional):
#   WORK=/tmp/medret-ref-repair   work directory (deleted at the end only if it lies under /tmp/)
#   GATE=claim                    claim (default): medret's documented claim: the cache canvas equals (a) for
#                                 greyscale sources larger than 320 px, and the model input it rebuilds
#                                 (cxr_preprocess) equals theirs for smaller ones, which the cache keeps at their
#                                 own size; canvas: the cache canvas must equal (a) for every greyscale file (never
#                                 true for sources under 320 px, by design)
#   OPENCV=4.6.0.66  NUMPY=1.26.4 opencv-python-headless and numpy for the reference venv (4.6.0.66 is the oldest
#                                 opencv with a wheel for Python 3.11; CheXzero pinned 4.5.3.56 / headless 4.1.2.30)
#   KEEP=0                        1: keep $WORK
#   RESULTS=                      a directory: copy compare.json, results.md and reference.json there
#   PYTHON=python3.11  MEDRET_PYTHON=<repo>/.venv/bin/python
#   REPAIR_GIT, CHEXZERO_GIT      clone sources; default: the local mirror if present, else the GitHub URL
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="${WORK:-/tmp/medret-ref-repair}"
GATE="${GATE:-claim}"
OPENCV="${OPENCV:-4.6.0.66}"
NUMPY="${NUMPY:-1.26.4}"
KEEP="${KEEP:-0}"
RESULTS="${RESULTS:-}"
PYTHON="${PYTHON:-python3.11}"
MEDRET_PYTHON="${MEDRET_PYTHON:-$ROOT/.venv/bin/python}"
source_of() {  # the local mirror (bare git) if it exists, else GitHub
    local mirror="/work/.mirror/rajpurkarlab+$1/repo"
    if [[ -d "$mirror" ]]; then echo "$mirror"; else echo "https://github.com/rajpurkarlab/$1.git"; fi
}
REPAIR_GIT="${REPAIR_GIT:-$(source_of CXR-RePaiR)}"
CHEXZERO_GIT="${CHEXZERO_GIT:-$(source_of CheXzero)}"
REF_PYTHON="$WORK/venv/bin/python"

START=$SECONDS
step() { echo; echo "=== $* [t=$((SECONDS - START)) s]"; }

cleanup() {
    [[ -d "$WORK" ]] && echo "work directory: $(du -sh "$WORK" | cut -f1)"
    if [[ "$KEEP" == 1 ]]; then
        echo "kept $WORK"
    elif [[ "$WORK" == /tmp/?* ]]; then
        rm -rf "$WORK" && echo "removed $WORK"
    else
        echo "not removing $WORK (not under /tmp/); delete it yourself"
    fi
}
trap cleanup EXIT

mkdir -p "$WORK"

# ---------------------------------------------------------------------------------------------------------------
step "1/5 reference venv and clones"
[[ -x "$REF_PYTHON" ]] || "$PYTHON" -m venv "$WORK/venv"
# Every run: a no-op when the pins are already there; switches opencv/numpy when OPENCV/NUMPY change.
"$REF_PYTHON" -m pip install -q -r "$HERE/requirements-ref.txt" "numpy==$NUMPY" \
    "opencv-python-headless==$OPENCV" >"$WORK/pip.log" 2>&1 || { tail -30 "$WORK/pip.log"; exit 1; }
for pair in "CXR-RePaiR $REPAIR_GIT" "CheXzero $CHEXZERO_GIT"; do
    set -- $pair
    [[ -d "$WORK/$1" ]] || git clone -q "$2" "$WORK/$1"
    echo "$1: $(git -C "$WORK/$1" log -1 --format='%H (%cd) %s' --date=short)  [from $2]"
done

# ---------------------------------------------------------------------------------------------------------------
step "2/5 synthetic images"
rm -rf "$WORK/images" "$WORK/ref"
"$REF_PYTHON" "$HERE/make_images.py" "$WORK/images"

# ---------------------------------------------------------------------------------------------------------------
step "3/5 their canvases: CXR-RePaiR (a) and CheXzero (b), their code, reference venv"
# Pillow 9.5 warns on every Image.ANTIALIAS access and tqdm draws bars: both go to the log.
"$REF_PYTHON" "$HERE/reference_canvases.py" --repair "$WORK/CXR-RePaiR" --chexzero "$WORK/CheXzero" \
    --images "$WORK/images" --out "$WORK/ref" 2>"$WORK/reference.stderr" \
    || { tail -30 "$WORK/reference.stderr"; exit 1; }

# ---------------------------------------------------------------------------------------------------------------
step "4/5 medret's decode_to_canvas (exact, fast), compared (medret's venv)"
status=0
"$MEDRET_PYTHON" "$HERE/compare_medret.py" --images "$WORK/images" --ref "$WORK/ref" --repair "$WORK/CXR-RePaiR" \
    --gate "$GATE" --json "$WORK/compare.json" --markdown "$WORK/results.md" || status=$?

# ---------------------------------------------------------------------------------------------------------------
step "5/5 Lanczos sweep: reference Pillow vs medret's Pillow (informational)"
"$REF_PYTHON" "$HERE/lanczos_sweep.py" --write "$WORK/lanczos_ref.json"
"$MEDRET_PYTHON" "$HERE/lanczos_sweep.py" --check "$WORK/lanczos_ref.json" | tee "$WORK/lanczos.txt" || true

# Their files were not modified (the import only writes __pycache__, which their .gitignore may not list).
for name in CXR-RePaiR CheXzero; do
    changes="$(git -C "$WORK/$name" status --porcelain --untracked-files=all | grep -v '__pycache__/' || true)"
    if [[ -n "$changes" ]]; then echo "$name clone modified:"; echo "$changes"; status=1; fi
done

if [[ -n "$RESULTS" ]]; then
    mkdir -p "$RESULTS"
    cp "$WORK/compare.json" "$WORK/results.md" "$WORK/ref/reference.json" "$WORK/lanczos.txt" "$RESULTS/"
    echo "results copied to $RESULTS"
fi

echo; echo "total $((SECONDS - START)) s"
[[ $status == 0 ]] && echo "REFERENCE CHECK PASSED" || echo "REFERENCE CHECK FAILED (exit $status)"
exit $status
