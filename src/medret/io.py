"""Atomic file writing, digests and provenance: the I/O edges shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medret.errors import MedretError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or exception leaves no half-written artifact at ``path`` (the temporary file or
    directory is removed), so a re-run never mistakes a partial output for a finished one.
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedretError(f"cannot create directory {dest.parent}: {exc.strerror}; check permissions") from exc
    if not os.access(dest.parent, os.W_OK):
        raise MedretError(f"directory {dest.parent} is not writable; fix its permissions or choose another results_dir")
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
        os.close(fd)
        tmp = Path(name)
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
    try:
        yield tmp
        if directory and dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the stable form that digests are taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any, length: int = 16) -> str:
    """Short SHA-256 hex digest of a JSON-serialisable object (bytes are hashed as-is)."""
    data = obj if isinstance(obj, bytes) else canonical_json(obj).encode()
    return hashlib.sha256(data).hexdigest()[:length]
