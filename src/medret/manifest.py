"""The manifest: the evaluated image-report pairs, and the relevance structure built from it.

Rules (docs/design.md §4, this project's protocol):

* the evaluated split only (config ``split``, default ``test``);
* reports that are empty after stripping whitespace are dropped (listed in ``skipped.csv``);
* ``views: frontal`` (the default) keeps frontal images only (PA, AP, FRONTAL and their variants such
  as AP AXIAL or PA LLD) and those whose view the dataset does not record; a lateral or oblique image
  is left out (listed in ``skipped.csv``), and so is a study that has nothing else. ``views: any``
  keeps every view;
* one image per study: frontal views first (PA, then AP, then FRONTAL), then the smallest pair id;
* identical report strings are one retrieval candidate (``text_id``), so an image query has
  exactly one relevant text and a report query may have several relevant images.

The report corpus (:func:`build_corpus`, ``corpus.parquet``): the image → report candidates. By
default the evaluated reports; ``extra_reports`` adds the reports of other splits (e.g. the
training split, as CXR-RePaiR retrieves from the training corpus), identical strings merged. The
evaluated reports keep text ids 0..U-1 and remain the report → image queries; added reports get
the following ids and are candidates only.

Relevance (:meth:`Manifest.relevance`), each mode reported on its own rows:

* ``exact`` (default): a report is relevant to an image when it is that image's report string;
  an image is relevant to a report string when that string is its report.
* ``labels``: pairs are grouped by their label vector (the dataset's ``label_*`` columns, the 14
  CheXpert findings for MIMIC-CXR). A label is *present* when it is 1, *absent* when it is 0 or
  missing (the CheXpert labeller leaves findings the report does not mention blank), and an
  uncertain label (-1) counts as present (``uncertain_labels: positive``, CheXpert's U-Ones
  policy) or absent (``negative``). A report string is relevant to an image query when some pair
  carrying that string has the image's label vector; an image is relevant to a report query when
  its label vector is that of some pair carrying the report. A pair whose labels are all missing
  (a study the labeller did not cover) has an unknown vector: only its own report string is
  relevant to it, as in ``exact``. With a larger corpus, a corpus report is relevant to an image
  when some pair carrying it (evaluated or added) has the image's label vector.

Before these rules, :func:`screen_images` finds pairs whose image is missing or unreadable: the
dataset's ``bad_images`` policy either stops the workflow (``fail``, the default) or leaves those
pairs out and lists them in ``skipped.csv`` (``skip``). Screening comes first, so a study whose PA
image is broken is evaluated on its AP image.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medret.errors import MedretError
from medret.io import digest, read_table, stale_artifact

_VIEW_ORDER = {"PA": 0, "AP": 1, "FRONTAL": 2}  # FRONTAL: a frontal view of unknown kind
RELEVANCE_MODES = ("exact", "labels")
UNCERTAIN_POLICIES = ("positive", "negative")
SKIPPED_COLUMNS = ["pair_id", "split", "image_path", "problem"]
BAD_IMAGE_POLICIES = ("fail", "skip")
VIEW_POLICIES = ("frontal", "any")


def screen_images(pairs: pd.DataFrame, *, split: str, policy: str, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read every image of ``split`` through; return (usable pairs, skipped pairs).

    ``policy`` ``fail`` raises one MedretError with the count and the first offenders; ``skip``
    drops those pairs and returns them with their problem (columns :data:`SKIPPED_COLUMNS`); a split
    left without pairs is an error either way. ``key`` names the policy's config key in messages.
    """
    from medret.imaging import describe_problems, scan_images

    if policy not in BAD_IMAGE_POLICIES:
        raise MedretError(f"config key {key}: {policy!r}; use fail or skip")
    rows = np.flatnonzero((pairs["split"] == split).to_numpy())
    found = scan_images(pairs["image_path"].to_numpy()[rows].tolist(), decode=True, desc=f"check {split} images")
    problems = {int(rows[i]): reason for i, reason in found.items()}
    checked = len(rows)
    all_paths = pairs["image_path"].tolist()
    first = describe_problems(all_paths, problems)
    if problems and len(problems) == checked:
        raise MedretError(
            f"all {checked} images of split {split!r} are missing or unreadable "
            f"(first: {first}); check the dataset's image paths"
        )
    if problems and policy == "fail":
        raise MedretError(
            f"{len(problems)} of {checked} images missing or unreadable (first: {first}); "
            f"fix the files, or set {key}: skip to leave those pairs out"
        )
    bad = np.zeros(len(pairs), dtype=bool)
    bad[list(problems)] = True
    skipped = pairs.loc[bad, ["pair_id", "split", "image_path"]].assign(problem=[problems[i] for i in sorted(problems)])
    if problems:
        print(
            f"skipped {len(problems)} of {checked} pairs with missing or unreadable images (first: {first})",
            file=sys.stderr,
        )
    return pairs.loc[~bad].reset_index(drop=True), skipped.reset_index(drop=True)


def is_frontal(views: pd.Series) -> pd.Series:
    """True for frontal views: PA, AP, FRONTAL and their variants (``AP AXIAL``, ``PA LLD``, ``AP SUPINE``, ...)."""
    v = views.fillna("").astype(str).str.strip().str.upper()
    return v.isin(list(_VIEW_ORDER)) | v.str.startswith(("PA ", "AP "))


def select_pairs(
    pairs: pd.DataFrame, split: str, *, one_per_study: bool = True, views: str = "any"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the manifest rules to a standard pairs table; return (selected pairs sorted by ``pair_id``, left out).

    ``views``: ``any`` or ``frontal`` (only frontal views and views not recorded; see :func:`is_frontal`).
    The pairs left out by a rule, not those merely not chosen for their study, come back with the reason
    in ``problem`` (columns :data:`SKIPPED_COLUMNS`): an empty report, or a view other than frontal.
    """
    if views not in VIEW_POLICIES:
        raise MedretError(f"config key views: {views!r}; use {' or '.join(VIEW_POLICIES)}")
    table = pairs[pairs["split"] == split].copy()
    if table.empty:
        found = ", ".join(sorted(pairs["split"].unique())[:10])
        raise MedretError(f"no pairs in split {split!r} (splits present: {found}); set the dataset's split key")
    table["report"] = table["report"].str.strip()
    empty = table["report"] == ""
    left_out = [table.loc[empty, ["pair_id", "split", "image_path"]].assign(problem="empty report")]
    table = table[~empty]
    if table.empty:
        raise MedretError(f"every report in split {split!r} is empty; the dataset has no usable pairs")
    if views == "frontal":
        view = table["view"].fillna("").astype(str).str.strip()
        other = ~is_frontal(view) & (view != "")
        problem = "not a frontal view (" + view[other].str.upper() + "; views: frontal)"
        left_out.append(table.loc[other, ["pair_id", "split", "image_path"]].assign(problem=problem))
        table = table[~other]
        if table.empty:
            raise MedretError(
                f"no frontal image in split {split!r} (views recorded: {', '.join(sorted(set(view))[:8])}); "
                "set the dataset's views: any"
            )
    if one_per_study:
        # Pairs without a study id are their own study.
        study = table["study_id"].where(table["study_id"] != "", "pair:" + table["pair_id"])
        view_rank = table["view"].str.upper().map(_VIEW_ORDER).fillna(len(_VIEW_ORDER))
        table = (
            table.assign(_study=study, _view=view_rank)
            .sort_values(["_study", "_view", "pair_id"])
            .drop_duplicates("_study")
            .drop(columns=["_study", "_view"])
        )
    table = table.sort_values("pair_id").reset_index(drop=True)
    text_ids, _ = pd.factorize(table["report"], sort=False)
    table.insert(3, "text_id", text_ids.astype(np.int64))
    dropped = pd.concat(left_out, ignore_index=True)[SKIPPED_COLUMNS]
    return table, dropped.sort_values("pair_id").reset_index(drop=True)


def label_presence(
    table: pd.DataFrame, *, uncertain: str = "positive", key: str = "relevance"
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The findings of the ``label_*`` columns (names without the prefix, sorted), which are present in each pair
    (N, F) and which pairs carry any label at all (N,), by the module doc's rule; ``key`` names the config key.

    A label is present when it is 1, or -1 under ``uncertain: positive``; 0 and missing are absent.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise MedretError(f"config key {key}: uncertain labels {uncertain!r}; use positive or negative")
    columns = sorted(c for c in table.columns if c.startswith("label_"))
    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(float).reshape(len(table), len(columns))
    odd = ~np.isnan(values) & ~np.isin(values, (-1.0, 0.0, 1.0))
    if odd.any():
        row, col = np.argwhere(odd)[0]
        pair = table["pair_id"].iloc[row] if "pair_id" in table else None
        where = f"pair {pair}" if isinstance(pair, str) else f"report {table['text_id'].iloc[row]}"
        raise MedretError(
            f"column {columns[col]}: value {values[row, col]:g} ({where}); labels must be 1, 0, -1 or empty"
        )
    present = (values == 1.0) | ((values == -1.0) & (uncertain == "positive"))
    labelled = ~np.isnan(values).all(axis=1) if columns else np.zeros(len(table), dtype=bool)
    return [c.removeprefix("label_") for c in columns], present, labelled


def label_groups(table: pd.DataFrame, *, uncertain: str = "positive", key: str = "relevance") -> np.ndarray:
    """Group id of every pair's label vector (see the module doc); pairs without labels get their own group.

    ``key`` names the config key in messages.
    """
    if not any(c.startswith("label_") for c in table.columns):
        raise MedretError(f"config key {key}: 'labels' needs label_* columns and this dataset has none; remove it")
    _, present, labelled = label_presence(table, uncertain=uncertain, key=key)
    codes, _ = pd.factorize(pd.Series([row.tobytes() for row in present]), sort=True)
    unknown = ~labelled
    codes[unknown] = codes.max(initial=-1) + 1 + np.arange(int(unknown.sum()))
    return codes.astype(np.int64)


def manifest_digest(table: pd.DataFrame) -> str:
    """Digest of the evaluated pairs: ids, reports, patients, studies, views, labels and regions.

    Image paths are left out, so a dataset read from another directory (a copy, a mount on a
    cluster node) gives the same digest and its caches stay valid.
    """
    return digest(table.drop(columns="image_path").astype(str).to_dict(orient="list"))


def build_corpus(pairs: pd.DataFrame, manifest: pd.DataFrame, extra_splits: Sequence[str]) -> pd.DataFrame:
    """The report corpus (module doc): one row per (text_id, report, label vector), with its pair ``count``.

    ``pairs`` is the standard pairs table, ``manifest`` the evaluated pairs (:func:`select_pairs`);
    reports of ``extra_splits`` that are empty after stripping are left out.
    """
    labels = sorted(c for c in manifest.columns if c.startswith("label_"))
    parts = [manifest[["report", *labels]]]
    extra = pairs[pairs["split"].isin(list(extra_splits))].sort_values("pair_id")
    if not extra.empty:
        extra = extra.assign(report=extra["report"].str.strip())
        parts.append(extra.loc[extra["report"] != "", ["report", *labels]])
    rows = pd.concat(parts, ignore_index=True)
    ids = dict(zip(manifest["report"], manifest["text_id"], strict=True))
    for text in pd.unique(rows["report"]):
        ids.setdefault(text, len(ids))
    rows.insert(0, "text_id", rows["report"].map(ids).astype(np.int64))
    corpus = rows.groupby(["text_id", "report", *labels], dropna=False, sort=True).size().rename("count")
    return corpus.reset_index()


@dataclass(frozen=True)
class Corpus:
    """The image → report candidates, as read from ``corpus.parquet`` (see :func:`build_corpus`)."""

    table: pd.DataFrame
    digest: str

    @classmethod
    def read(cls, path: str | Path, manifest: Manifest) -> Corpus:
        """Read the corpus written with ``manifest``; refuse one written for another manifest."""
        table, meta = read_table(path)
        if meta.get("manifest_digest") != manifest.digest or "digest" not in meta:
            raise stale_artifact(path, "made for another manifest")
        return cls(table, meta["digest"])

    @property
    def texts(self) -> list[str]:
        """Every candidate report string, indexed by ``text_id`` (the evaluated ones first)."""
        return self.table.drop_duplicates("text_id").sort_values("text_id")["report"].tolist()

    @property
    def frequency(self) -> np.ndarray:
        """How many pairs carry each text id (evaluated and added splits together)."""
        return self.table.groupby("text_id", sort=True)["count"].sum().to_numpy(np.int64)


@dataclass(frozen=True)
class Manifest:
    """The evaluated pairs and their digest, as read from ``manifest.parquet``."""

    table: pd.DataFrame
    digest: str

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Read a manifest written by the ``manifest`` stage."""
        table, meta = read_table(path)
        if "digest" not in meta:
            raise MedretError(f"{path}: not a medret manifest (no digest); re-run the manifest rule")
        return cls(table, meta["digest"])

    @property
    def pair_ids(self) -> list[str]:
        return self.table["pair_id"].tolist()

    @property
    def texts(self) -> list[str]:
        """Unique report strings, indexed by ``text_id``."""
        first = self.table.drop_duplicates("text_id").sort_values("text_id")
        return first["report"].tolist()

    @property
    def text_ids(self) -> np.ndarray:
        return self.table["text_id"].to_numpy(np.int64)

    def relevance(
        self, mode: str, *, uncertain: str = "positive", key: str = "relevance", corpus: Corpus | None = None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Relevant candidates of every query under relevance ``mode`` (module doc).

        Returns (corpus text ids relevant to each pair's image, pair positions relevant to each
        evaluated text), sorted. Without ``corpus`` the candidates are the evaluated reports.
        ``key`` names the config key in messages.
        """
        if mode not in RELEVANCE_MODES:
            known = ", ".join(RELEVANCE_MODES)
            raise MedretError(f"config key {key}: unknown relevance mode {mode!r}; use one of {known}")
        text_ids = self.text_ids
        rows = self.table[["text_id", *self._labels()]] if corpus is None else corpus.table
        if mode == "exact":
            groups, row_groups = text_ids, rows["text_id"].to_numpy(np.int64)
        else:
            both = pd.concat([self.table, rows], ignore_index=True)
            codes = label_groups(both, uncertain=uncertain, key=key)
            groups, row_groups = codes[: len(self.table)], codes[len(self.table) :]
        texts_of_group: dict[int, set[int]] = {}
        for g, t in zip(row_groups.tolist(), rows["text_id"].tolist(), strict=True):
            texts_of_group.setdefault(g, set()).add(t)
        groups_of_text: dict[int, set[int]] = {}
        pairs_of_group: dict[int, list[int]] = {}
        for i, (g, t) in enumerate(zip(groups.tolist(), text_ids.tolist(), strict=True)):
            groups_of_text.setdefault(t, set()).add(g)
            pairs_of_group.setdefault(g, []).append(i)
        # A pair's own report is always relevant (its unknown label vector matches no other row).
        i2t = [
            np.asarray(sorted(texts_of_group.get(g, set()) | {t}), dtype=np.int64)
            for g, t in zip(groups.tolist(), text_ids.tolist(), strict=True)
        ]
        t2i = [
            np.asarray(sorted(i for g in groups_of_text[t] for i in pairs_of_group[g]), dtype=np.int64)
            for t in range(len(groups_of_text))
        ]
        return i2t, t2i

    def regions(self) -> pd.DataFrame | None:
        """Each pair's region of interest (the four ``region_*`` columns, indexed by pair id), or None when the
        dataset has no regions."""
        from medret.datasets import REGION_COLUMNS

        if not all(c in self.table.columns for c in REGION_COLUMNS):
            return None
        return self.table.set_index("pair_id")[list(REGION_COLUMNS)].astype(float)

    def _labels(self) -> list[str]:
        return sorted(c for c in self.table.columns if c.startswith("label_"))

    def clusters(self) -> dict[str, str | None]:
        """Bootstrap cluster of every query id.

        Image queries (pair ids) resample by patient, or singly when the dataset has no patient
        ids; text queries (one per unique report) resample singly (None).
        """
        from medret.retrieval import text_query_ids

        patients = self.table["patient_id"].fillna("")
        out: dict[str, str | None] = {p: (c or None) for p, c in zip(self.table["pair_id"], patients, strict=True)}
        out.update(dict.fromkeys(text_query_ids(len(self.texts))))
        return out
