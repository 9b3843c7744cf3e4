#!/usr/bin/env bash
# Reference check of medret's cxr_clip family against CXR-CLIP's real code (see README.md in this directory).
#
#   1. builds a reference venv (Python 3.11, torch 2.14.1, CXR-CLIP's own pins for the rest) and clones CXR-CLIP;
#   2. writes random weights in the layout its code loads, a tiny MIMIC-CXR-like data set and the test inputs;
#   3. runs CXR-CLIP's Hydra trainer, train.py, unpatched, which writes model-last.tar;
#   4. lists the pickle globals of that file and tries torch.load(weights_only=True) on it;
#   5. embeds the test inputs with CXR-CLIP's own evaluator code (reference venv);
#   6. loads the same file through medret.models.load_model and compares the embeddings (medret's venv):
#      exit status non-zero if medret refuses the file or any input differs (see compare_medret.py).
#
# Everything is built under $WORK (outside the repository) and deleted at the end unless KEEP=1.
#
# Environment (all optional):
#   WORK=/tmp/medret-ref-cxrclip   work directory (deleted at the end only if it lies under /tmp/)
#   ARCHS="r50 swint"              image towers: r50 = configs/model/clip_resnet_clinical.yaml, swint = clip_swin_...
#   BERT=base                      text tower shape: base (Bio_ClinicalBERT's, 1.3 GB .tar) or small (0.3 GB .tar)
#   KEEP=0                         1: keep $WORK
#   FIXTURE=                       a directory: copy the checkpoints, BERT config/vocab, test inputs and reference
#                                  embeddings there before $WORK is removed
#   PYTHON=python3.11  MEDRET_PYTHON=<repo>/.venv/bin/python  CXR_CLIP_GIT=<a clone or URL of CXR-CLIP>
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
WORK="${WORK:-/tmp/medret-ref-cxrclip}"
ARCHS="${ARCHS:-r50 swint}"
BERT="${BERT:-base}"
KEEP="${KEEP:-0}"
FIXTURE="${FIXTURE:-}"
PYTHON="${PYTHON:-python3.11}"
MEDRET_PYTHON="${MEDRET_PYTHON:-$ROOT/.venv/bin/python}"
# A local mirror when there is one (this machine has no internet), else the public repository.
MIRROR=/work/.mirror/Soombit-ai+cxr-clip/repo
if [[ -d "$MIRROR" ]]; then DEFAULT_GIT="$MIRROR"; else DEFAULT_GIT=https://github.com/Soombit-ai/cxr-clip; fi
CXR_CLIP_GIT="${CXR_CLIP_GIT:-$DEFAULT_GIT}"
REF_PYTHON="$WORK/venv/bin/python"
CLONE="$WORK/cxr-clip"

# Offline, and every cache inside $WORK: nothing is downloaded and nothing is written to ~/.cache.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HF_HOME="$WORK/hf_home" TORCH_HOME="$WORK/torch_home" NLTK_DATA="$WORK/nltk_data"

START=$SECONDS
TIMES=()
step() { echo; echo "=== $* [t=$((SECONDS - START)) s]"; }
timed() { TIMES+=("$1: $(($2)) s"); }

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
step "1/6 reference venv and clone"
t=$SECONDS
if [[ ! -x "$REF_PYTHON" ]]; then
    "$PYTHON" -m venv "$WORK/venv"
    # torch 2.14.1 instead of CXR-CLIP's 2.0.1 (no wheel for it here); the rest with CXR-CLIP's own pins.
    "$REF_PYTHON" -m pip install -q torch==2.14.1 torchvision==0.29.1 >"$WORK/pip.log" 2>&1 \
        || { tail -30 "$WORK/pip.log"; exit 1; }
    "$REF_PYTHON" -m pip install -q -r "$HERE/requirements-ref.txt" >>"$WORK/pip.log" 2>&1 \
        || { tail -30 "$WORK/pip.log"; exit 1; }
fi
"$REF_PYTHON" -c "import torch, torchvision, transformers, tokenizers, hydra, omegaconf, PIL, numpy
print('reference venv: torch', torch.__version__, '| torchvision', torchvision.__version__, '| transformers',
      transformers.__version__, '| tokenizers', tokenizers.__version__, '| hydra', hydra.__version__, '| omegaconf',
      omegaconf.__version__, '| Pillow', PIL.__version__, '| numpy', numpy.__version__)"
[[ -d "$CLONE" ]] || git clone -q "$CXR_CLIP_GIT" "$CLONE"
echo "CXR-CLIP: $(git -C "$CLONE" log -1 --format='%H (%cd) %s' --date=short)"
timed "venv + clone" "SECONDS - t"

# ---------------------------------------------------------------------------------------------------------------
step "2/6 random weights, training data, test inputs"
t=$SECONDS
swin_flag=()
[[ " $ARCHS " == *" swint "* ]] && swin_flag=(--swin)
"$REF_PYTHON" "$HERE/prepare.py" --work "$WORK" --bert "$BERT" "${swin_flag[@]}"
timed "prepare" "SECONDS - t"

status=0
for arch in $ARCHS; do
    case "$arch" in
        r50) model=clip_resnet_clinical ;;
        swint) model=clip_swin_clinical ;;
        *) echo "unknown arch $arch (use r50, swint)"; exit 2 ;;
    esac
    run="$WORK/runs/$arch" out="$WORK/out/$arch"
    rm -rf "$run" "$out"
    mkdir -p "$run" "$out"

    # -----------------------------------------------------------------------------------------------------------
    step "3/6 [$arch] CXR-CLIP's train.py (model=$model), CPU, 1 epoch"
    t=$SECONDS
    # Hydra overrides only: our data, our local BERT directory (the trainer asserts tokenizer == text encoder), no
    # AMP, small batches without worker processes (prefetch_factor must be null then), 1 epoch without warm-up.
    # PYTHONPATH=cpu_shim: the one runtime patch (GPU telemetry in the progress bar), see cpu_shim/sitecustomize.py.
    (
        cd "$run"  # Hydra's run dir ./outputs/${now:%Y-%m-%d}/${now:%H-%M-%S} is relative to the working directory
        PYTHONPATH="$HERE/cpu_shim" "$REF_PYTHON" "$CLONE/train.py" \
            "data_train=[mimic_cxr]" "data_valid=[mimic_cxr]" \
            "data_train.mimic_cxr.data_path=$WORK/data/mimic_train.csv" \
            "data_valid.mimic_cxr.data_path=$WORK/data/mimic_valid.csv" \
            "model=$model" \
            "model.text_encoder.name=$WORK/weights/bert" \
            "tokenizer.pretrained_model_name_or_path=$WORK/weights/bert" \
            base.amp=false \
            dataloader.train.batch_size=4 dataloader.train.num_workers=0 \
            dataloader.train.prefetch_factor=null dataloader.train.pin_memory=false \
            dataloader.valid.batch_size=4 dataloader.valid.num_workers=0 \
            dataloader.valid.prefetch_factor=null dataloader.valid.pin_memory=false \
            scheduler.config.total_epochs=1 scheduler.config.warmup_epochs=0
    ) >"$run/train.log" 2>&1 || { tail -40 "$run/train.log"; exit 1; }
    grep -E "last-model saved|best.tar saved|Training has been completed" "$run/train.log" || true
    ckpt="$(ls "$run"/outputs/*/*/checkpoints/model-last.tar)"
    echo "checkpoint: $ckpt ($(du -h "$ckpt" | cut -f1))"
    timed "[$arch] train.py" "SECONDS - t"

    # -----------------------------------------------------------------------------------------------------------
    step "4/6 [$arch] pickle globals and torch.load(weights_only=True)"
    "$MEDRET_PYTHON" "$HERE/inspect_checkpoint.py" "$ckpt" --json "$out/inspect.json"

    # -----------------------------------------------------------------------------------------------------------
    step "5/6 [$arch] reference embeddings with CXR-CLIP's evaluator code"
    t=$SECONDS
    # cxrclip/evaluator.py calls torch.load(path) (weights_only defaults to True since torch 2.6): torch's documented
    # switch restores the old default that the authors' torch 2.0.1 had, for this step only.
    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 "$REF_PYTHON" "$HERE/reference_embed.py" \
        --repo "$CLONE" --checkpoint "$ckpt" --test "$WORK/test" --out "$out" >"$out/reference.log" 2>&1 \
        || { tail -40 "$out/reference.log"; exit 1; }
    cat "$out/reference.json"
    timed "[$arch] reference embeddings" "SECONDS - t"

    # -----------------------------------------------------------------------------------------------------------
    step "6/6 [$arch] medret: load_model + embeddings, compared"
    t=$SECONDS
    rc=0
    "$MEDRET_PYTHON" "$HERE/compare_medret.py" --checkpoint "$ckpt" --text-model "$WORK/weights/bert" \
        --test "$WORK/test" --reference "$out" --json "$out/compare.json" || rc=$?
    [[ $rc == 0 ]] || status=1
    timed "[$arch] medret compare (exit $rc)" "SECONDS - t"

    if [[ -n "$FIXTURE" ]]; then
        mkdir -p "$FIXTURE/$arch"
        cp "$ckpt" "$FIXTURE/$arch/model-last.tar"
        cp "$out"/reference.npz "$out"/reference.json "$out"/inspect.json "$FIXTURE/$arch/"
        [[ -f "$out/compare.json" ]] && cp "$out/compare.json" "$FIXTURE/$arch/"
    fi
done

# CXR-CLIP's files were not modified (outputs went to $WORK/runs; __pycache__ is git-ignored by the clone).
if [[ -n "$(git -C "$CLONE" status --porcelain)" ]]; then
    echo "the clone is modified:"; git -C "$CLONE" status --porcelain; status=1
else
    echo; echo "clone unmodified (git status clean)"
fi

if [[ -n "$FIXTURE" ]]; then
    mkdir -p "$FIXTURE/bert"
    cp "$WORK/weights/bert/config.json" "$WORK/weights/bert/vocab.txt" "$FIXTURE/bert/"  # all medret reads
    rm -rf "$FIXTURE/test" && cp -r "$WORK/test" "$FIXTURE/test"
    echo "fixture: $FIXTURE ($(du -sh "$FIXTURE" | cut -f1))"
fi

echo; echo "timing (total $((SECONDS - START)) s):"
printf '  %s\n' "${TIMES[@]}"
echo; [[ $status == 0 ]] && echo "REFERENCE CHECK PASSED" || echo "REFERENCE CHECK FAILED"
exit $status
