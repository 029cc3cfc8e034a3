"""Bundle archives: safe extraction and deterministic ``.tar.gz`` writing.

:func:`extract_archive` unpacks a ``.tar.gz``, ``.tgz`` or ``.zip`` member by member after
checking every member first (no absolute paths, ``..``, links or devices, no repeated or
colliding names, bounded size), and removes what it wrote when it fails. :func:`write_tar_gz`
writes members into a byte-for-byte reproducible ``.tar.gz`` and moves it into place
atomically. Neither knows what a bundle holds: :mod:`splitpack.formats.bundle` reads bundles
from archives with the first and packs them with the second. Runs on devices: the standard
library and :func:`~splitpack.formats.manifest.safe_relpath` only.
"""

from __future__ import annotations

import gzip
import io
import os
import secrets
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from splitpack.errors import InvalidBundleError
from splitpack.formats.manifest import safe_relpath

__all__ = ["ARCHIVE_SUFFIXES", "DEFAULT_MAX_EXTRACT_BYTES", "extract_archive", "write_tar_gz"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
DEFAULT_MAX_EXTRACT_BYTES = 4 * 2**30
MAX_ARCHIVE_MEMBERS = 10_000
_CHUNK = 1 << 20


def _check_names(names: list[str], owner: str) -> None:
    """Refuse names that would collide on disk: case-only twins and file-vs-folder clashes."""
    lowered: dict[str, str] = {}
    for name in names:
        if name.lower() in lowered:
            raise InvalidBundleError(f"{owner}: {name!r} and {lowered[name.lower()]!r} differ "
                                     "only in case or repeat; rename one of them")
        lowered[name.lower()] = name
    folders = {"/".join(name.split("/")[:i]) for name in names
               for i in range(1, name.count("/") + 1)}
    clashes = sorted(folders.intersection(names))
    if clashes:
        raise InvalidBundleError(f"{owner}: {clashes} are both files and folders; rename them")


def _archive_members(archive: Path) -> Iterator[tuple[str, str, int, Any]]:
    """(name, kind, declared size, opener) per member; kind is file, dir or what it really is."""
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                mode = stat.S_IFMT(info.external_attr >> 16)
                kind = ("dir" if info.is_dir() else "encrypted" if info.flag_bits & 0x1
                        else "symlink" if mode == stat.S_IFLNK
                        else "file" if mode in (0, stat.S_IFREG) else "special file")
                yield info.filename, kind, info.file_size, lambda i=info: zipped.open(i)
        return
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            kind = ("file" if member.isreg() else "dir" if member.isdir()
                    else "symlink" if member.issym() else "hardlink" if member.islnk()
                    else "device or fifo")
            yield member.name, kind, member.size, lambda m=member: tar.extractfile(m)


def _plan(archive: Path, max_bytes: int) -> list[tuple[str, str, int]]:
    """Check every member before anything is written; returns (name, kind, size)."""
    plan, total, seen = [], 0, {}  # seen: name -> kind; only folders may repeat
    for name, kind, size, _ in _archive_members(archive):
        clean = name.removeprefix("./").rstrip("/") if kind == "dir" else name.removeprefix("./")
        if kind == "dir" and clean in ("", "."):
            continue
        if kind not in ("file", "dir"):
            raise InvalidBundleError(f"archive {archive}: member {name!r} is a {kind}; a bundle "
                                     "archive holds only regular files and folders")
        try:
            safe_relpath(clean)
        except InvalidBundleError as exc:
            raise InvalidBundleError(f"archive {archive}: member {exc}") from None
        if seen.get(clean, "dir") != "dir" or (clean in seen and kind != "dir"):
            raise InvalidBundleError(f"archive {archive}: member {clean!r} appears more than "
                                     "once; pack the bundle again with `pack_bundle`")
        seen[clean] = kind
        total += size
        plan.append((clean, kind, size))
        if len(plan) > MAX_ARCHIVE_MEMBERS or total > max_bytes:
            raise InvalidBundleError(
                f"archive {archive}: more than {MAX_ARCHIVE_MEMBERS} members or {max_bytes} "
                "bytes unpacked; pass a larger max_bytes if this bundle is really that big")
    _check_names([name for name, kind, _ in plan if kind == "file"], f"archive {archive}")
    return plan


def _extract_member(target: Path, name: str, size: int, stream: IO[bytes]) -> None:
    dest = target / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.parent.resolve().is_relative_to(target.resolve()):
        raise InvalidBundleError(f"member {name!r} would be written outside {target}")
    written = 0
    with stream, open(dest, "xb") as out:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            written += len(chunk)
            if written > size:
                raise InvalidBundleError(f"member {name!r} holds more than its declared "
                                         f"{size} bytes")
            out.write(chunk)


def extract_archive(archive: str | os.PathLike[str], target: str | os.PathLike[str], *,
                    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES) -> Path:
    """Extract a bundle archive into ``target`` without writing anything outside it.

    Every member is checked before the first is written: only regular files and folders, safe
    relative names, no repeated names, at most ``max_bytes`` in all. On failure, what was
    written is removed (and ``target`` too if this call created it).

    Args:
        archive: A ``.tar.gz``, ``.tgz`` or ``.zip`` file.
        target: An absent or empty folder.
        max_bytes: Limit on the total unpacked size.

    Returns:
        ``target`` as a Path.
    """
    archive, target = Path(archive), Path(target)
    if not archive.name.endswith(ARCHIVE_SUFFIXES):
        raise InvalidBundleError(f"{archive} is not a bundle archive; allowed suffixes: "
                                 f"{', '.join(ARCHIVE_SUFFIXES)}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InvalidBundleError(f"cannot extract {archive} into {target}: it exists and is not "
                                 "an empty folder; pass an empty or new extract_to folder")
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    try:
        plan = _plan(archive, max_bytes)
        kinds = {name: (kind, size) for name, kind, size in plan}
        for name, _, _, opener in _archive_members(archive):
            clean = name.removeprefix("./").rstrip("/")
            if clean not in kinds:
                continue
            kind, size = kinds[clean]
            if kind == "dir":
                (target / clean).mkdir(parents=True, exist_ok=True)
            else:
                _extract_member(target, clean, size, opener())
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        _remove_extracted(target, created)
        raise InvalidBundleError(f"archive {archive} cannot be extracted ({exc}); re-copy it "
                                 "or pack it again with `pack_bundle`") from None
    except BaseException:
        _remove_extracted(target, created)
        raise
    return target


def _remove_extracted(target: Path, created: bool) -> None:
    if created:
        shutil.rmtree(target, ignore_errors=True)
        return
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def write_tar_gz(archive: Path, members: Iterable[tuple[str, bytes]]) -> Path:
    """Write ``(name, contents)`` members into a deterministic ``.tar.gz``, atomically.

    Members keep their order; each has mtime 0, uid/gid 0, mode 0644, and the gzip stream has
    no name or time, so equal members give equal archives. The archive is written to a
    temporary file beside ``archive`` and moved into place with ``os.replace``; if anything
    fails, ``members`` included (it is consumed while writing), the temporary file is removed.

    Args:
        archive: Where to write.
        members: Archive member names and their contents.

    Returns:
        ``archive``.
    """
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.parent / f".{archive.name}.{secrets.token_hex(8)}.partial"
    handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(handle, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped, \
                    tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, archive)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return archive
