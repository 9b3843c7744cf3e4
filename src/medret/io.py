"""The I/O edges shared by every stage: atomic writes, digests and provenance, parquet tables and HDF5
artifacts under checksums, and the one error a damaged or stale artifact gets (:func:`stale_artifact`)."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medret.errors import MedretError

if TYPE_CHECKING:
    import pandas as pd

_SUFFIX = ".partial"


def _dir_problem(path: Path, *, writable: bool = True) -> str | None:
    """Why directory ``path`` cannot be used (created if missing) for new files, or None.

    The nearest existing ancestor decides: it must be a directory and, with ``writable``, accept
    new files. (Root ignores permission bits, but a read-only file system still refuses it.)
    """
    base = next((p for p in (path, *path.parents) if os.path.lexists(p)), Path("."))
    if not base.is_dir():
        return f"{base} is a file, not a directory"
    if not writable or os.access(base, os.W_OK | os.X_OK):
        return None
    with contextlib.suppress(OSError):
        if os.statvfs(base).f_flag & os.ST_RDONLY:
            return f"{base} is on a read-only file system"
    return f"{base} is not writable"


def check_output_dir(path: str | os.PathLike[str], key: str, *, writable: bool = True) -> None:
    """Fail with one line naming config ``key`` unless directory ``path`` exists or can be created.

    With ``writable`` (the default) it must also accept new files. ``writable=False`` only rejects
    a file in the way, which is enough to plan a run (a dry run may read results it cannot write).
    """
    problem = _dir_problem(Path(path), writable=writable)
    if problem:
        raise MedretError(f"config key {key}: cannot write to {path} ({problem}); choose another {key}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temporaries(dest: Path) -> None:
    """Delete temporaries of ``dest`` whose writer, a process of this host, no longer runs.

    A process killed mid-write (``kill -9``, out of memory) cannot clean up after itself; the next
    write of the same output does. Temporaries of live processes and of other hosts (whose
    processes cannot be checked from here) are left alone.
    """
    head, host = f".{dest.name}.", socket.gethostname()
    for old in dest.parent.glob(f"{glob.escape(head)}*{_SUFFIX}"):
        fields = old.name[len(head) : -len(_SUFFIX)].rsplit(".", 2)  # host (may hold dots), pid, random
        if len(fields) != 3 or fields[0] != host or not fields[1].isdigit() or _alive(int(fields[1])):
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A crash or exception leaves no half-written artifact at ``path`` (the temporary file or
    directory is removed), so a re-run never mistakes a partial output for a finished one. The
    temporary is named ``.<name>.<host>.<pid>.<random>.partial``: a writer that was killed before it
    could remove its temporary is recognised as dead, and its leftover removed, by the next write.
    """
    dest = Path(path)
    problem = _dir_problem(dest.parent)
    if problem:
        raise MedretError(f"cannot write {dest}: {problem}; fix that or choose another results_dir")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedretError(f"cannot create directory {dest.parent}: {exc.strerror}; check permissions") from exc
    _remove_stale_temporaries(dest)
    prefix = f".{dest.name}.{socket.gethostname()}.{os.getpid()}."
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=_SUFFIX, dir=dest.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=_SUFFIX, dir=dest.parent)
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
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            # Emptied first: a writer that still holds it open (h5py retries closing a file it
            # could not flush) then finds space to finish, and the space returns at once.
            with contextlib.suppress(OSError):
                os.truncate(tmp, 0)
            tmp.unlink(missing_ok=True)
        full = disk_full(exc)
        if full:
            raise MedretError(
                f"cannot write {dest}: {full} on {dest.parent}; free space there or choose another results_dir"
            ) from exc
        raise


#: What the writers' errors say when the disk or the user's quota is full (h5py and pyarrow wrap
#: the OS error in their own message, often without an errno).
_FULL = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}


def disk_full(exc: BaseException | None) -> str | None:
    """Which of "no space left on device" and "disk quota exceeded" ``exc`` or its causes report, or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError | RuntimeError):  # h5py reports a failed flush as a RuntimeError
            for code, text in _FULL.items():
                if getattr(exc, "errno", None) == code or text.lower() in str(exc).lower():
                    return text.lower()
        exc = exc.__cause__ or exc.__context__
    return None


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the stable form that digests are taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(obj: Any, length: int = 16) -> str:
    """Short SHA-256 hex digest of a JSON-serialisable object (bytes are hashed as-is)."""
    data = obj if isinstance(obj, bytes) else canonical_json(obj).encode()
    return hashlib.sha256(data).hexdigest()[:length]


# --------------------------------------------------------------------------------------------
# HDF5 artifacts: every dataset and attribute under a checksum

#: The attribute that holds an HDF5 artifact's checksum (see :func:`seal_h5`).
CHECKSUM_ATTR = "medret_checksum"
#: Keyword arguments of ``h5py.File`` for writing artifacts: the newest file format, whose metadata
#: (object headers, chunk indexes, the superblock) carries checksums of its own.
H5_WRITE: dict[str, Any] = {"mode": "w", "libver": "latest"}


def write_strings(f: Any, name: str, strings: Any) -> None:
    """Store a list of strings as UTF-8 bytes (``name``, uint8) and their boundaries (``name.offsets``, int64).

    Not HDF5's variable-length strings: those live in the file's global heap, which carries no checksum,
    and a flipped bit there can make HDF5 loop forever when the dataset is read.
    """
    import numpy as np

    encoded = [str(s).encode("utf-8") for s in strings]
    f.create_dataset(name, data=np.frombuffer(b"".join(encoded), dtype=np.uint8))
    f.create_dataset(f"{name}.offsets", data=np.cumsum([0, *map(len, encoded)], dtype=np.int64))


def read_strings(f: Any, name: str) -> list[str]:
    """The strings :func:`write_strings` stored; ValueError when the boundaries do not fit the bytes."""
    import numpy as np

    data = f[name][()].tobytes()
    offsets = np.asarray(f[f"{name}.offsets"][()])
    if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(data):
        raise ValueError(f"string boundaries of {name!r} do not match its {len(data)} bytes")
    if (np.diff(offsets) < 0).any():
        raise ValueError(f"string boundaries of {name!r} are not in order")
    return [data[a:b].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)]


def set_attrs(f: Any, attrs: Mapping[str, Any]) -> None:
    """Set HDF5 attributes, strings as fixed-length UTF-8 (kept in the checksummed object header, not the heap)."""
    import numpy as np

    for key, value in attrs.items():
        if isinstance(value, str):
            raw = value.encode("utf-8")
            f.attrs.create(key, np.array(raw or b"\x00", dtype=f"S{max(1, len(raw))}"))
        else:
            f.attrs[key] = value


def get_attrs(f: Any) -> dict[str, Any]:
    """HDF5 attributes as Python values: strings decoded (UnicodeDecodeError is a ValueError), numbers as such."""
    out: dict[str, Any] = {}
    for key, value in f.attrs.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        elif hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
            if isinstance(value, bytes):
                value = value.decode("utf-8")
        out[key] = value
    return out


def seal_h5(f: Any) -> None:
    """Store the checksum of an HDF5 artifact open for writing, after its last dataset and attribute.

    Large datasets are created with ``fletcher32=True`` (a checksum per chunk, verified by HDF5 on
    every read); the checksum covers the bytes of every other dataset (e.g. the image cache's
    ``boxes``, string ``ids``, whose bytes live in a heap HDF5 does not checksum), the name, shape,
    dtype and filters of every dataset, and every attribute.
    """
    set_attrs(f, {CHECKSUM_ATTR: _h5_checksum(f)})  # fixed-length: nothing of the file in the global heap


def verify_h5(f: Any, path: str | Path, what: str) -> None:
    """Raise one line naming ``path`` unless the artifact ``f`` (open for reading) matches its checksum."""
    stored = f.attrs.get(CHECKSUM_ATTR)
    if isinstance(stored, bytes):
        stored = stored.decode(errors="replace")
    if stored is None:
        raise stale_artifact(path, f"{what} without a checksum (written by another program or a medret before 0.2)")
    if _h5_checksum(f) != stored:
        raise stale_artifact(path, f"damaged {what} (its contents no longer match the checksum written with it)")


def _h5_checksum(f: Any) -> str:
    import numpy as np

    h = hashlib.sha256()

    def add(*parts: Any) -> None:
        for part in parts:
            data = part if isinstance(part, bytes) else str(part).encode()
            h.update(len(data).to_bytes(8, "little") + data)

    for name in sorted(f):
        ds = f[name]
        if not hasattr(ds, "shape"):  # a group: artifacts hold none, but a damaged file might
            add("group", name)
            continue
        add("dataset", name, ds.dtype.str, ds.shape, ds.chunks, ds.compression, ds.fletcher32)
        if ds.fletcher32:
            continue
        values = ds[()]
        if ds.dtype.kind == "O":  # variable-length strings: their bytes, one by one
            for v in np.ravel(values):
                add(v if isinstance(v, bytes) else str(v).encode())
        else:
            add(np.ascontiguousarray(values).tobytes())
    for key in sorted(f.attrs):
        if key == CHECKSUM_ATTR:
            continue
        value = f.attrs[key]
        if isinstance(value, str | bytes):
            add("attr", key, value)
        else:
            arr = np.asarray(value)
            add("attr", key, arr.dtype.str, arr.shape, arr.tobytes() if arr.dtype.kind != "O" else repr(value))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Parquet tables (manifest, corpus, corruption specs, rank tables)


def write_table(table: pd.DataFrame, path: str | Path, **metadata: str) -> None:
    """Write a parquet table atomically with string key/value metadata (provenance) and a checksum.

    Parquet's page checksums cover the data pages only; ``medret.checksum`` (:func:`table_checksum`)
    covers what a reader gets back: every value, the column names and types, and the metadata.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    medret_meta = {k: str(v) for k, v in metadata.items()}
    meta = dict(arrow.schema.metadata or {})
    meta.update({f"medret.{k}".encode(): v.encode() for k, v in medret_meta.items()})
    arrow = arrow.replace_schema_metadata(meta)
    meta[b"medret.checksum"] = table_checksum(arrow.to_pandas(), medret_meta).encode()
    with atomic_output(path) as tmp:
        # Page checksums: read_table then detects a damaged page instead of returning wrong values.
        pq.write_table(arrow.replace_schema_metadata(meta), tmp, write_page_checksum=True)


def table_checksum(table: pd.DataFrame, metadata: dict[str, str]) -> str:
    """SHA-256 of a table as read back: column names, dtypes, every value (pandas' row hashes) and ``metadata``."""
    import pandas as pd

    h = hashlib.sha256()
    layout = {"columns": [str(c) for c in table.columns], "dtypes": [str(t) for t in table.dtypes]}
    h.update(canonical_json([layout, sorted(metadata.items())]).encode())
    for column in table.columns:
        values = table[column]
        try:
            hashed = pd.util.hash_pandas_object(values, index=False)
        except TypeError:  # unhashable cells (lists, dicts): their text
            hashed = pd.util.hash_pandas_object(values.astype(str), index=False)
        h.update(hashed.to_numpy().tobytes())
    return h.hexdigest()


def read_table(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read a parquet table written by :func:`write_table`; return it with its medret metadata.

    A truncated or damaged file is an error naming it: page checksums are verified (a flipped byte in
    the data is caught rather than read as a wrong value), and so is the table's own checksum, which
    also covers the footer (types, metadata) that page checksums leave out.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise MedretError(f"{path}: file not found; re-run the workflow to regenerate it")
    try:
        arrow = pq.read_table(path, page_checksum_verification=True)
        meta = {
            k.decode()[len("medret.") :]: v.decode()
            for k, v in (arrow.schema.metadata or {}).items()
            if k.startswith(b"medret.")
        }
        table = arrow.to_pandas()
    # Damage surfaces as many exception types: bad magic, thrift, snappy or page checksum errors from
    # Arrow, undecodable metadata, and KeyError/TypeError from pandas reading a damaged pandas schema.
    except Exception as exc:
        message = str(exc).replace("\n", " ")
        raise stale_artifact(path, f"unreadable parquet file ({message})") from exc
    stored = meta.pop("checksum", None)
    if stored is None:
        raise stale_artifact(
            path, "parquet table without a checksum (written by another program or a medret before 0.2)"
        )
    if table_checksum(table, meta) != stored:
        raise stale_artifact(path, "damaged parquet table (its contents no longer match the checksum written with it)")
    return table, meta


def stale_artifact(path: str | Path, problem: str) -> MedretError:
    """The error of an artifact that is damaged, incomplete or made from other inputs: ``problem`` and the fix, which
    always works (every artifact is a target of the workflow's default rule, so a plain re-run rebuilds it)."""
    return MedretError(f"{path}: {problem}; delete it and re-run the workflow")
