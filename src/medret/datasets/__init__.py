"""Dataset adapters: each turns a dataset on disk into the standard pairs table.

An adapter is one module with one declaration (:class:`DatasetAdapter`), registered with
:func:`register_adapter`: its config keys (:class:`medret.plugins.Option`: schema, default,
description; config validation assembles a dataset entry's schema from them), the files the workflow
must track (``source_files``) and how they are read into a DataFrame with :data:`PAIR_COLUMNS`
(plus optional ``label_*`` columns and the four ``region_*`` columns of a region of interest,
:data:`REGION_COLUMNS`). Everything after that (manifest, image cache, corruption
specs) is the same for every dataset. An adapter in another package declares itself through the
``medret.datasets`` entry point (:mod:`medret.plugins`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medret.errors import MedretError
from medret.plugins import Option, check_target, entry_point_declarations, resolve

#: Dataset keys every adapter takes (besides ``adapter``); each adapter declares its own in ``options``.
COMMON_OPTIONS = (
    "split",
    "train_split",
    "bad_images",
    "views",
    "image_size",
    "fast_decode",
    "extra_reports",
    "relevance",
    "uncertain_labels",
)

#: Columns of the standard pairs table, in order. ``patient_id``, ``study_id`` and ``view`` may be
#: empty strings when a dataset does not have them; label columns are named ``label_<finding>``.
PAIR_COLUMNS = ("pair_id", "image_path", "report", "split", "patient_id", "study_id", "view")
#: A region of interest per image (the box around its findings), as fractions of its height and width:
#: top and left edge, height and width; NaN where an image has none (the CSV format documents them).
REGION_COLUMNS = ("region_top", "region_left", "region_height", "region_width")


def check_regions(regions: pd.DataFrame, where: str) -> None:
    """Every row of the four :data:`REGION_COLUMNS` (floats) is empty or a box inside the image; ``where``
    names the file or table in the error."""
    values = regions[list(REGION_COLUMNS)].to_numpy(float)
    partial = np.isnan(values).any(axis=1) & ~np.isnan(values).all(axis=1)
    top, left, height, width = values.T
    with np.errstate(invalid="ignore"):
        outside = (top < 0) | (left < 0) | (top + height > 1 + 1e-9) | (left + width > 1 + 1e-9)
        bad = partial | ~np.isnan(top) & (outside | (height <= 0) | (width <= 0))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise MedretError(
            f"{where}: row {row + 2} has region {values[row].tolist()}; give all four region_* values as fractions "
            "of the image (top, left, height, width, inside [0, 1]) or leave all four empty"
        )


@dataclass(frozen=True)
class DatasetAdapter:
    """A dataset format: its one declaration.

    ``source_files(name, entry)`` lists the files the workflow tracks as inputs (relative to the
    working directory); ``load(entry, sources)`` returns the standard pairs table; each is a callable or
    a ``"module:attribute"`` string (imported when used). ``options`` declares the adapter's own config
    keys; any key of a dataset entry that is neither one of them nor in :data:`COMMON_OPTIONS` is an
    error. ``requires`` names common keys the adapter needs given (e.g. a dataset without a test split).
    """

    name: str
    source_files: Callable[[str, Mapping[str, Any]], list[str]] | str
    load: Callable[[Mapping[str, Any], list[str]], pd.DataFrame] | str
    description: str
    options: Mapping[str, Option] = field(default_factory=dict)
    requires: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_target(self.source_files, f"dataset adapter {self.name}: source_files")
        check_target(self.load, f"dataset adapter {self.name}: load")
        bad = [k for k, o in self.options.items() if not isinstance(o, Option)]
        if bad:
            raise TypeError(f"dataset adapter {self.name}: option {bad[0]!r} is not a medret.plugins.Option")

    def sources(self, name: str, entry: Mapping[str, Any]) -> list[str]:
        """The files dataset ``name`` is read from (its ``source_files``)."""
        return resolve(self.source_files)(name, entry)


_ADAPTERS: dict[str, DatasetAdapter] = {}
_PLUGINS_LOADED = False


def register_adapter(adapter: DatasetAdapter) -> DatasetAdapter:
    """Add an adapter to the registry (called at import time by each adapter module)."""
    _ADAPTERS[adapter.name] = adapter
    return adapter


def get_adapter(name: str, *, key: str = "adapter") -> DatasetAdapter:
    """Return the adapter called ``name`` or raise a MedretError naming the config key."""
    _load_adapters()
    try:
        return _ADAPTERS[name]
    except KeyError:
        known = ", ".join(sorted(_ADAPTERS))
        raise MedretError(f"config key {key}: unknown dataset adapter {name!r}; use one of: {known}") from None


def dataset_options(entry: Mapping[str, Any], name: str = "<dataset>") -> set[str]:
    """The keys config entry ``datasets.<name>`` may hold; its adapter must exist and take every key it sets.

    The counterpart of :func:`medret.models.get_family`'s check: the schema allows the union of all
    adapters' keys, so without it a ``study_list`` given to a csv dataset would pass and be silently
    ignored.
    """
    adapter = get_adapter(entry["adapter"], key=f"datasets.{name}.adapter")
    allowed = {"adapter", *COMMON_OPTIONS, *adapter.options}
    for key in entry:
        if key not in allowed:
            raise MedretError(
                f"config key datasets.{name}.{key}: not an option of adapter {adapter.name} "
                f"(options: {', '.join(adapter.options) or 'none'}; every adapter takes "
                f"{', '.join(sorted(COMMON_OPTIONS))}); remove it"
            )
    return allowed


def list_adapters() -> dict[str, DatasetAdapter]:
    """Every registered adapter by name: the built-in ones and those of installed plug-ins."""
    _load_adapters()
    return dict(sorted(_ADAPTERS.items()))


def load_pairs(name: str, entry: Mapping[str, Any], sources: list[str]) -> pd.DataFrame:
    """Read dataset ``name`` (config ``entry``) from ``sources`` into the standard pairs table."""
    adapter = get_adapter(entry["adapter"], key=f"datasets.{name}.adapter")
    try:
        table = resolve(adapter.load)(entry, sources)
    except MedretError as exc:
        # Adapters do not know the entry's name: their messages say datasets.<name>, filled in here.
        if "datasets.<name>" not in str(exc):
            raise
        raise MedretError(str(exc).replace("datasets.<name>", f"datasets.{name}")) from exc
    missing = [c for c in PAIR_COLUMNS if c not in table.columns]
    if missing:  # a programming error in an adapter, not a user error
        raise RuntimeError(f"adapter {adapter.name} returned no column(s) {missing}")
    labels = sorted(c for c in table.columns if c.startswith("label_"))
    regions = [c for c in REGION_COLUMNS if c in table.columns]
    if regions and len(regions) < len(REGION_COLUMNS):  # a programming error in an adapter
        raise RuntimeError(f"adapter {adapter.name} returned only {regions} of the region columns")
    if regions:
        check_regions(table, f"dataset adapter {adapter.name}")
    return table[[*PAIR_COLUMNS, *labels, *regions]].reset_index(drop=True)


def _load_adapters() -> None:
    # The built-in adapters, imported lazily so that `import medret.datasets` stays cheap and cycle-free,
    # then those of installed plug-ins.
    global _PLUGINS_LOADED
    from medret.datasets import chexpert_plus as _chexpert_plus  # noqa: F401
    from medret.datasets import csv as _csv  # noqa: F401
    from medret.datasets import iu_xray as _iu_xray  # noqa: F401
    from medret.datasets import mimic as _mimic  # noqa: F401

    if not _PLUGINS_LOADED:
        _PLUGINS_LOADED = True
        for adapter in entry_point_declarations("adapter", DatasetAdapter):
            if adapter.name in _ADAPTERS and _ADAPTERS[adapter.name] is not adapter:
                raise MedretError(
                    f"dataset adapter plug-in {adapter.name!r} has the name of a registered adapter; rename it"
                )
            register_adapter(adapter)
