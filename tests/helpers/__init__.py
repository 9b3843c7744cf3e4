"""Assertions shared by the adapter tests; the modules of this package hold what several test modules share.

Imported as ``helpers`` (pyproject's pytest ``pythonpath`` puts tests/ on the path). A test module imports from
here, never from another test module (tests/workflow/test_config.py checks it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medret.errors import MedretError


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The message of a raised MedretError, checked to be one line."""
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def assert_study_list_errors(
    load: Callable[[Path], Any], path: Path, *, unknown: str, malformed: str, key: str
) -> None:
    """A study list (``path``) naming no study of the dataset, one holding a malformed id, and a missing
    one each stop ``load(path)`` with its one-line error; the last names config key ``key``."""
    path.write_text(f"{unknown}\n", encoding="utf-8")
    with pytest.raises(MedretError, match="none of its 1 study ids is in") as exc:
        load(path)
    one_line(exc)
    path.write_text(f"{malformed}\n", encoding="utf-8")
    with pytest.raises(MedretError, match=f"{re.escape(repr(malformed))} is not a study id") as exc:
        load(path)
    one_line(exc)
    with pytest.raises(MedretError, match=rf"nope\.txt: study list not found; .* {re.escape(key)}") as exc:
        load(path.parent / "nope.txt")
    one_line(exc)
