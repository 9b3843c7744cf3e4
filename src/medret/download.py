"""Opt-in download of the public checkpoint and tokenizer files, for users with internet access.

Nothing in the workflow or the tests downloads anything: this module only runs when a user asks,
``python -m medret download NAME [--dest DIR]``. The default destination, ``weights/``, is where the
docs' config snippets and ``config/examples`` look, and ``make clean`` never touches it. Each file
is streamed to a temporary file beside its destination, checked against its published digest where
one is known, and renamed into place, so an interrupted download never leaves a file that looks
complete. Some checkpoints are only published behind interactive pages (Box, Google Drive); for
those the command prints where to get the file and which config key takes its path, instead of
scraping the page.

``--mirror URL`` (or ``MEDRET_DOWNLOAD_MIRROR``) replaces the scheme and host of every URL, for
institutional mirrors (and for the tests, which serve fixtures from a loopback server).
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from medret.errors import MedretError
from medret.io import atomic_output

_HF = "https://huggingface.co"
_CXR_CLIP = "https://twg.kakaocdn.net/brainrepo/models/cxr-clip"

#: Where ``python -m medret download`` writes when no ``--dest`` is given.
DEFAULT_DEST = "weights"


@dataclass(frozen=True)
class PublicFile:
    """One published file: where it lives, its digest, and what to keep of it."""

    name: str
    url: str | None
    filename: str
    sha256: str | None = None
    md5: str | None = None
    member: str | None = None  # keep only this member of a zip archive
    manual: str | None = None  # instructions when the file cannot be fetched by a plain GET


def owners() -> dict[str, list[str]]:
    """Which config keys each public file fills, by file name: ``["models.<name>.checkpoint (family medclip)"]``,
    read from the families' declarations (their options' ``published``)."""
    from medret.models import list_families

    out: dict[str, list[str]] = {name: [] for name in PUBLIC_FILES}
    for family in list_families().values():
        for key, option in family.files.items():
            for name in option.published:
                out.setdefault(name, []).append(f"models.<name>.{key} (family {family.name})")
    return out


def _hf(repo: str, path: str, revision: str = "main") -> str:
    return f"{_HF}/{repo}/resolve/{revision}/{path}"


def _hf_directory(
    prefix: str,
    repo: str,
    directory: str,
    filenames: tuple[str, ...],
    revision: str = "main",
) -> list[PublicFile]:
    """Entries for files of one Hugging Face repo that a model reads as one directory.

    Each is named ``<prefix>-<file stem>`` (``_`` as ``-``) and lands in ``<directory>/<file>`` under the
    destination, so downloading all of them builds the directory the config key takes.
    """
    return [
        PublicFile(
            f"{prefix}-{fname.split('.')[0].replace('_', '-')}",
            _hf(repo, fname, revision),
            f"{directory}/{fname}",
        )
        for fname in filenames
    ]


PUBLIC_FILES: dict[str, PublicFile] = {
    f.name: f
    for f in [
        PublicFile(
            "clip-vit-b-32-openai",
            "https://openaipublic.azureedge.net/clip/models/"
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
            "ViT-B-32.pt",
            sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        ),
        PublicFile(
            "cxr-repair",
            None,
            "clip-imp-pretrained_128_6_after_4.pt",
            manual="download it from the Stanford Box folder linked in the CXR-RePaiR README "
            "(https://stanfordmedicine.box.com/s/dbebk0jr5651dj8x1cu6b6kqyuuvz3ml)",
        ),
        PublicFile(
            "chexzero",
            None,
            "best_64_5e-05_original_22000_0.864.pt",
            manual="download it from the Google Drive folder 1makFLiEMbSleYltaRxw81aBhEDMpVwno "
            "linked in the CheXzero README",
        ),
        PublicFile(
            "medclip-vit",
            "https://storage.googleapis.com/pytrial/medclip-vit-pretrained.zip",
            "medclip-vit-pytorch_model.bin",
            member="pytorch_model.bin",
        ),
        PublicFile(
            "medclip-resnet",
            "https://storage.googleapis.com/pytrial/medclip-pretrained.zip",
            "medclip-resnet-pytorch_model.bin",
            member="pytorch_model.bin",
        ),
        *[
            PublicFile(
                f"cxr-clip-{arch}-{data}",
                f"{_CXR_CLIP}/{h}/{arch}_{data}.tar",
                f"{arch}_{data}.tar",
            )
            for arch, data, h in [
                ("r50", "m", "f982386ef38aa3ecd6ce1f8f928e8aa8"),
                ("r50", "mc", "f7ebbe4ad815868905d0820dbbde3662"),
                ("r50", "mcc", "de4b5e4ae2047c1fb7960ddcd8d861cb"),
                ("swint", "m", "a21ef120894e072ae77434daf6b98b72"),
                ("swint", "mc", "97cbbdfb347d22ea44e95a70c7b0520a"),
                ("swint", "mcc", "a25ce760064591c899f67c97ed7790de"),
            ]
        ],
        *_hf_directory(
            "bio-clinicalbert",
            "emilyalsentzer/Bio_ClinicalBERT",
            "Bio_ClinicalBERT",
            ("vocab.txt", "config.json"),
        ),
        PublicFile(
            "biovil-image",
            _hf("microsoft/BiomedVLP-CXR-BERT-specialized", "biovil_image_resnet50_proj_size_128.pt", "v1.1"),
            "biovil_image_resnet50_proj_size_128.pt",
            md5="02ce6ee460f72efd599295f440dbb453",
        ),
        PublicFile(
            "biovil-t-image",
            _hf("microsoft/BiomedVLP-BioViL-T", "biovil_t_image_model_proj_size_128.pt", "v1.0"),
            "biovil_t_image_model_proj_size_128.pt",
            md5="a83080e2f23aa584a4f2b24c39b1bb64",
        ),
        # CXR-BERT, the text model, from the same repo and revision as each image model (hi-ml-multimodal's pins).
        *_hf_directory(
            "biovil-text",
            "microsoft/BiomedVLP-CXR-BERT-specialized",
            "BiomedVLP-CXR-BERT-specialized",
            ("config.json", "pytorch_model.bin", "vocab.txt"),
            revision="v1.1",
        ),
        *_hf_directory(
            "biovil-t-text",
            "microsoft/BiomedVLP-BioViL-T",
            "BiomedVLP-BioViL-T",
            ("config.json", "pytorch_model.bin", "vocab.txt"),
            revision="v1.0",
        ),
        # No revision or digest of BiomedCLIP's files is recorded, so they follow main (its config changed over time).
        *_hf_directory(
            "biomedclip",
            "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
            "BiomedCLIP",
            ("open_clip_pytorch_model.bin", "open_clip_config.json", "vocab.txt"),
        ),
        # PubMedCLIP (family transformers). Seen in the repository's history: config.json and pytorch_model.bin
        # (commit 117ca20; the weights' LFS digest), preprocessor_config.json and tokenizer_config.json (commit
        # ed5c719). vocab.json and merges.txt were not seen in a listing; they are what CLIPTokenizer.save_pretrained
        # writes beside tokenizer_config.json, and the model card's CLIPProcessor.from_pretrained needs them. If
        # one is missing, `hf download flaviagiammarino/pubmed-clip-vit-base-patch32 --local-dir DIR` gets every file.
        *_hf_directory(
            "pubmed-clip",
            "flaviagiammarino/pubmed-clip-vit-base-patch32",
            "pubmed-clip-vit-base-patch32",
            ("config.json", "preprocessor_config.json", "tokenizer_config.json", "vocab.json", "merges.txt"),
        ),
        PublicFile(
            "pubmed-clip-pytorch-model",
            _hf("flaviagiammarino/pubmed-clip-vit-base-patch32", "pytorch_model.bin"),
            "pubmed-clip-vit-base-patch32/pytorch_model.bin",
            sha256="4daa7650d2b47e55c37b5ca7dcabe826fd82407c26028a574bcc422f35a94aa4",
        ),
        PublicFile(
            "medsiglip-448",
            None,
            "medsiglip-448",
            manual="MedSigLIP is gated: log in at https://huggingface.co/google/medsiglip-448 and accept the Health AI "
            "Developer Foundations terms, then run `hf auth login` and "
            "`hf download google/medsiglip-448 --local-dir weights/medsiglip-448`",
        ),
    ]
}


def _mirrored(url: str, mirror: str | None) -> str:
    if not mirror:
        return url
    parts, base = urllib.parse.urlsplit(url), urllib.parse.urlsplit(mirror)
    return urllib.parse.urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, ""))


def download(name: str, dest: str | Path, *, mirror: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch public file ``name`` into directory ``dest``; return the path of the file written."""
    if name not in PUBLIC_FILES:
        raise MedretError(f"unknown file {name!r}; `python -m medret files` lists the downloadable files")
    spec = PUBLIC_FILES[name]
    target = Path(dest) / spec.filename
    if spec.url is None:
        keys = " or ".join(owners()[name]) or "the config key that takes it"
        raise MedretError(f"{spec.filename} cannot be fetched automatically: {spec.manual}; then set {keys} to it")
    mirror = mirror or os.environ.get("MEDRET_DOWNLOAD_MIRROR")
    url = _mirrored(spec.url, mirror)
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with atomic_output(target) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    sha256.update(chunk)
                    md5.update(chunk)
                    done += len(chunk)
                    if total:
                        print(
                            f"\r{spec.filename}: {done / total:6.1%} of {total / 1e6:.1f} MB", end="", file=sys.stderr
                        )
            print(file=sys.stderr)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise MedretError(f"{url}: download failed ({reason}); check the network or use --mirror") from exc
        for algo, want, got in (("sha256", spec.sha256, sha256), ("md5", spec.md5, md5)):
            if want and got.hexdigest() != want:
                raise MedretError(f"{url}: {algo} {got.hexdigest()} != published {want}; the file is corrupt, retry")
        if spec.member:
            _extract_member(Path(tmp), spec.member, url)
    return target


def _extract_member(archive: Path, member: str, url: str) -> None:
    """Replace the downloaded zip by the one member we keep (same path, still a temporary file)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if n == member or n.endswith("/" + member)]
            if len(names) != 1:
                raise MedretError(f"{url}: the archive holds no single {member}; it may have changed upstream")
            data = zf.read(names[0])
    except zipfile.BadZipFile as exc:
        raise MedretError(f"{url}: not a zip archive; it may have changed upstream") from exc
    archive.write_bytes(data)
