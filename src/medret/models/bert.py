"""What the BERT text towers share: the BERT-base architecture and one WordPiece tokeniser.

Bio_ClinicalBERT (MedCLIP, CXR-CLIP), BiomedBERT (BiomedCLIP) and CXR-BERT (BioViL) are BERT-base models that differ
in their vocabularies. Each original pipeline tokenises with a Hugging Face BERT tokenizer built from the model's
``vocab.txt``: the ``tokenizers`` library's WordPiece (``##`` continuations, words over 100 characters become
``[UNK]``) behind BERT's normaliser (control characters dropped, CJK characters split, optional lower-casing and
accent stripping) and pre-tokeniser, ``[CLS] ... [SEP]`` around each text, special tokens matched verbatim.
:class:`WordPiece` builds exactly that from the file, with the options each family's pipeline sets (lower-casing,
accents, truncation length, padding to the longest text or to a fixed length); what a family does to the text
first (open_clip's cleaning for BiomedCLIP, hi-ml's stripped punctuation for BioViL) stays in the family.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from medret.errors import MedretError

#: The BERT-base architecture (BertConfig names) of Bio_ClinicalBERT, BiomedBERT and CXR-BERT, which
#: differ only in ``vocab_size``.
BERT_BASE: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}
#: BERT's special tokens; the first four must be in every vocabulary.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def read_vocab(path: Path) -> dict[str, int]:
    """Token -> id from a BERT ``vocab.txt``: one token a line, id = line number (transformers' ``load_vocab``)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise MedretError(f"config key models.<name>.text_model: cannot read {path} ({exc})") from None
    if lines and lines[-1] == "":
        lines.pop()
    return {token.rstrip("\r"): i for i, token in enumerate(lines)}


class TokenBatch(NamedTuple):
    """A tokenised batch, each (B, L) int64: token ids, attention mask, token type ids."""

    ids: torch.Tensor
    mask: torch.Tensor
    types: torch.Tensor


class WordPiece:
    """BERT's WordPiece tokeniser on a local ``vocab.txt``, as the Hugging Face BERT tokenizers apply it.

    ``padding="longest"`` pads a batch to its longest text, ``"max_length"`` every text to ``max_length``; texts
    are truncated to ``max_length`` tokens with ``[SEP]`` kept last. ``lowercase`` and ``strip_accents`` are
    ``do_lower_case`` and ``strip_accents`` of the tokenizer's config (``None``: strip when lower-casing).
    ``hint`` ends the error when the file is not a BERT vocabulary (where to get the right one).
    """

    def __init__(
        self,
        vocab_path: Path,
        *,
        max_length: int,
        padding: Literal["longest", "max_length"],
        lowercase: bool = True,
        strip_accents: bool | None = None,
        chinese_chars: bool = True,
        hint: str = "",
    ) -> None:
        from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
        from tokenizers.models import WordPiece as WordPieceModel

        self.path = Path(vocab_path)
        self.vocab = read_vocab(self.path)
        missing = [t for t in SPECIAL_TOKENS[:4] if t not in self.vocab]
        if missing:
            raise MedretError(
                f"{self.path}: no {', '.join(missing)} token; not a BERT vocabulary{'; ' + hint if hint else ''}"
            )
        tok = Tokenizer(
            WordPieceModel(self.vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100)
        )
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=chinese_chars, strip_accents=strip_accents, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in self.vocab])
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.vocab["[CLS]"]), ("[SEP]", self.vocab["[SEP]"])],
        )
        tok.enable_truncation(max_length=max_length)
        pad = {"length": max_length} if padding == "max_length" else {}
        tok.enable_padding(pad_id=self.vocab["[PAD]"], pad_token="[PAD]", pad_type_id=0, **pad)
        self.tokenizer: Tokenizer = tok
        self.max_length = max_length
        self.padding = padding
        self.options = {
            "do_lower_case": lowercase,
            "strip_accents": strip_accents,
            "tokenize_chinese_chars": chinese_chars,
        }
        self.vocab_size = max(self.vocab.values()) + 1  # ids are line numbers
        self.pad_id = self.vocab["[PAD]"]
        self.vocab_sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()

    def __call__(self, texts: Sequence[str]) -> TokenBatch:
        """Token ids, attention mask and token type ids of ``texts``."""
        enc = self.tokenizer.encode_batch([str(t) for t in texts])
        return TokenBatch(
            torch.tensor([e.ids for e in enc], dtype=torch.long),
            torch.tensor([e.attention_mask for e in enc], dtype=torch.long),
            torch.tensor([e.type_ids for e in enc], dtype=torch.long),
        )
