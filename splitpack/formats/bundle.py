"""Write, read, verify and pack bundles.

A bundle is a folder holding ``manifest.json`` and the files it lists with their sha256 and
size. :func:`write_bundle` builds it in a temporary sibling folder and swaps it in only when it
is complete. :func:`read_bundle` accepts the folder or its archive (``.tar.gz``, ``.tgz``,
``.zip``, extracted safely by :func:`~splitpack.formats.archive.extract_archive`), checks the
manifest (see :mod:`splitpack.formats.manifest` for how ``bundle_id`` protects it) and every
file's size and sha256. Files present but not listed are ignored and never loaded:
:meth:`Bundle.path` only hands out listed files. Runs on devices: standard library, numpy and
pydantic only.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

import numpy as np

from splitpack.errors import InvalidBundleError
from splitpack.formats.archive import (
    ARCHIVE_SUFFIXES, DEFAULT_MAX_EXTRACT_BYTES, _CHUNK, _check_names, extract_archive,
    write_tar_gz,
)  # fmt: skip
from splitpack.formats.manifest import (
    MANIFEST_NAME, FileEntry, Manifest, Variant, build_manifest, manifest_to_json,
    parse_manifest, safe_relpath,
)  # fmt: skip

__all__ = [
    "Bundle", "safe_relpath", "write_bundle", "read_bundle", "verify_files", "pack_bundle",
    "read_samples",
]  # fmt: skip

MAX_MANIFEST_BYTES = 16 * 2**20
_RECOMPILE = "the bundle was modified or corrupted — recompile or re-copy it"


def _sha256_stream(stream: IO[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _entry_problem(relpath: str, entry: FileEntry, sha256: str, size: int) -> str | None:
    if size != entry.size:
        return f"{relpath}: size mismatch (manifest {entry.size} bytes, file {size})"
    if sha256 != entry.sha256:
        return (f"{relpath}: sha256 mismatch (manifest {entry.sha256[:12]}…, "
                f"file {sha256[:12]}…)")
    return None


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk.

    Attributes:
        root: The bundle folder (for archives, where it was extracted).
        manifest: Its parsed manifest.
    """

    root: Path
    manifest: Manifest

    def path(self, relpath: str) -> Path:
        """The on-disk path of a file the manifest lists.

        Args:
            relpath: Path relative to the bundle root, as in ``manifest.files``.

        Returns:
            ``root / relpath``.

        Raises:
            InvalidBundleError: if the path is unsafe or not listed in the manifest.
        """
        safe_relpath(relpath)
        if relpath not in self.manifest.files:
            listed = sorted(self.manifest.files)
            shown = ", ".join(listed[:20]) + (", ..." if len(listed) > 20 else "")
            raise InvalidBundleError(
                f"{relpath!r} is not a file of bundle {self.root} (only files listed in "
                f"manifest.json are loaded); listed files: {shown or 'none'}")
        return self.root / relpath

    @property
    def variants(self) -> list[Variant]:
        """The manifest's variants: ``local``, ``edge`` and the split variants."""
        return list(self.manifest.variants)

    def variant(self, variant_id: str) -> Variant:
        """The variant with id ``variant_id``.

        Raises:
            InvalidBundleError: listing the valid ids.
        """
        for variant in self.manifest.variants:
            if variant.id == variant_id:
                return variant
        ids = ", ".join(v.id for v in self.manifest.variants)
        raise InvalidBundleError(f"bundle {self.manifest.model_id!r} has no variant "
                                 f"{variant_id!r}; valid ids: {ids}")

    def read_bytes(self, relpath: str) -> bytes:
        """The bytes of a listed file, checked against its sha256 and size as they are read.

        Args:
            relpath: Path relative to the bundle root, as in ``manifest.files``.

        Returns:
            The file's contents.
        """
        path = self.path(relpath)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidBundleError(f"{relpath}: cannot be read ({exc.strerror}); "
                                     f"{_RECOMPILE}") from None
        problem = _entry_problem(relpath, self.manifest.files[relpath],
                                 hashlib.sha256(data).hexdigest(), len(data))
        if problem:
            raise InvalidBundleError(f"{problem}; {_RECOMPILE}")
        return data


# -- writing ----------------------------------------------------------------------------------

def _write_file(dest: Path, source: bytes | Path, relpath: str) -> dict[str, Any]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "xb") as out:
        if isinstance(source, Path):
            try:
                stream: IO[bytes] = open(source, "rb")
            except OSError as exc:
                raise InvalidBundleError(
                    f"file {relpath!r}: its source {str(source)!r} cannot be read "
                    f"({exc.strerror}); pass an existing file or the bytes") from None
        else:
            stream = io.BytesIO(bytes(source))
        with stream:
            digest = hashlib.sha256()
            size = 0
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return {"sha256": digest.hexdigest(), "size": size}


def _check_replaceable(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise InvalidBundleError(f"{target} exists and is not a folder; choose another path")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
        raise InvalidBundleError(
            f"{target} exists and is not a bundle (no {MANIFEST_NAME}); it is only replaced when "
            "it is one — choose another folder or remove it yourself")


def _replace_folder(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    # A folder cannot be swapped atomically on POSIX: move the old one aside, move the new one
    # in, and move the old one back if that fails.
    previous = staging.with_name(staging.name + ".previous")
    os.rename(target, previous)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(previous, target)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def write_bundle(folder: str | os.PathLike[str], manifest_fields: Mapping[str, Any],
                 files: Mapping[str, bytes | Path]) -> Manifest:
    """Write a bundle folder atomically.

    Everything is written into a temporary sibling folder, ``manifest.json`` last; the target
    (absent, empty, or an existing bundle) is replaced only once that folder is complete. On
    any failure the old target is left as it was and the temporary folder is removed.

    Args:
        folder: The bundle folder to create or replace.
        manifest_fields: Every manifest key except ``files`` and ``bundle_id``, which are
            computed here.
        files: Relative path -> contents (bytes) or source file (Path).

    Returns:
        The manifest that was written.
    """
    target = Path(folder)
    for computed in ("files", "bundle_id"):
        if computed in manifest_fields:
            raise InvalidBundleError(f"manifest_fields[{computed!r}] is computed by "
                                     "write_bundle; remove it from manifest_fields")
    for relpath, source in files.items():
        safe_relpath(relpath)
        if relpath == MANIFEST_NAME:
            raise InvalidBundleError(f"files must not contain {MANIFEST_NAME!r}; write_bundle "
                                     "writes it from manifest_fields")
        if not isinstance(source, (bytes, bytearray, memoryview, Path)):
            raise InvalidBundleError(f"files[{relpath!r}] must be bytes or a pathlib.Path; got "
                                     f"{type(source).__name__}")
    _check_names(list(files), "files")
    placeholder = {"sha256": "0" * 64, "size": 0}
    build_manifest({**manifest_fields, "files": dict.fromkeys(files, placeholder)})  # fail fast
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not mkdtemp: its 0700 mode would stick to the bundle; mkdir applies the umask.
    staging = target.parent / f".{target.name}.partial-{secrets.token_hex(8)}"
    staging.mkdir()
    try:
        entries = {relpath: _write_file(staging / relpath, files[relpath], relpath)
                   for relpath in sorted(files)}
        manifest = build_manifest({**manifest_fields, "files": entries})
        text = manifest_to_json(manifest).encode("utf-8")
        _write_file(staging / MANIFEST_NAME, text, MANIFEST_NAME)
        _replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


# -- reading ----------------------------------------------------------------------------------

def verify_files(bundle: Bundle) -> None:
    """Check that every listed file exists inside the bundle with its size and sha256.

    Args:
        bundle: The bundle to check.

    Raises:
        InvalidBundleError: naming every file that is missing, leaves the bundle or differs.
    """
    root = bundle.root.resolve()
    problems = []
    for relpath, entry in sorted(bundle.manifest.files.items()):
        try:
            real = (bundle.root / relpath).resolve(strict=True)
        except OSError:
            problems.append(f"{relpath}: missing (manifest lists {entry.size} bytes)")
            continue
        if not real.is_relative_to(root) or not real.is_file():
            problems.append(f"{relpath}: not a regular file inside the bundle (it is {real})")
            continue
        with open(real, "rb") as stream:
            sha256, size = _sha256_stream(stream)
        problem = _entry_problem(relpath, entry, sha256, size)
        if problem:
            problems.append(problem)
    if problems:
        raise InvalidBundleError(f"{'; '.join(problems)}; {_RECOMPILE} (bundle {bundle.root})")


def _load_manifest(root: Path) -> Manifest:
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise InvalidBundleError(
            f"{MANIFEST_NAME} not found in {root}; a bundle folder holds {MANIFEST_NAME} and the "
            "files it lists — point at the folder or archive that `write_bundle` / "
            "`pack_bundle` wrote")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise InvalidBundleError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes; a manifest "
                                 "is a few KiB — this is not a splitpack manifest")
    return parse_manifest(path.read_bytes(), source=str(path))


def read_bundle(path: str | os.PathLike[str], *, extract_to: str | os.PathLike[str] | None = None,
                max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES) -> Bundle:
    """Open and verify a bundle folder or archive.

    Args:
        path: A bundle folder, or a ``.tar.gz`` / ``.tgz`` / ``.zip`` archive of one (files at
            the archive root, or inside a single top folder).
        extract_to: Absent or empty folder for an archive's contents; default a fresh temporary
            folder, which the caller may delete when done.
        max_bytes: Limit on an archive's unpacked size.

    Returns:
        The bundle, with its manifest parsed and every file's size and sha256 checked.
    """
    source = Path(path)
    if source.is_dir():
        return _open_folder(source)
    if not source.is_file():
        raise InvalidBundleError(f"bundle {source} does not exist; pass a bundle folder or an "
                                 f"archive ({', '.join(ARCHIVE_SUFFIXES)})")
    scratch = Path(tempfile.mkdtemp(prefix="splitpack-")) if extract_to is None else None
    try:
        root = extract_archive(source, scratch or Path(extract_to),  # type: ignore[arg-type]
                               max_bytes=max_bytes)
        children = list(root.iterdir())
        if not (root / MANIFEST_NAME).exists() and len(children) == 1 and children[0].is_dir():
            root = children[0]
        return _open_folder(root)
    except BaseException:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise


def _open_folder(root: Path) -> Bundle:
    bundle = Bundle(root=root, manifest=_load_manifest(root))
    verify_files(bundle)
    return bundle


def pack_bundle(folder: str | os.PathLike[str], archive_path: str | os.PathLike[str]) -> Path:
    """Pack a verified bundle folder into a deterministic ``.tar.gz``, atomically.

    Members: ``manifest.json`` first, then the listed files in sorted order; mtime 0, uid/gid
    0, mode 0644, no gzip name or time. Unlisted files are left out. The archive is written to
    a temporary file beside ``archive_path`` and moved into place with ``os.replace``.

    Args:
        folder: The bundle folder.
        archive_path: Where to write; must end in ``.tar.gz`` or ``.tgz``.

    Returns:
        ``archive_path`` as a Path.
    """
    archive = Path(archive_path)
    if not archive.name.endswith((".tar.gz", ".tgz")):
        raise InvalidBundleError(f"archive path {archive} must end in .tar.gz or .tgz")
    if not Path(folder).is_dir():
        raise InvalidBundleError(f"{folder} is not a bundle folder; pack_bundle packs a folder "
                                 "written by write_bundle")
    bundle = read_bundle(folder)

    def members() -> Iterator[tuple[str, bytes]]:
        for name in [MANIFEST_NAME, *sorted(bundle.manifest.files)]:
            # The canonical text, so equal manifests pack to equal archives.
            yield name, (manifest_to_json(bundle.manifest).encode("utf-8")
                         if name == MANIFEST_NAME else bundle.read_bytes(name))

    return write_tar_gz(archive, members())


def read_samples(bundle: Bundle) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The bundled sample inputs and every variant's expected outputs.

    Args:
        bundle: A bundle whose manifest has ``samples``.

    Returns:
        ``(inputs, {variant id: expected outputs})``, each with ``samples.count`` rows.
    """
    samples = bundle.manifest.samples
    if samples is None:
        raise InvalidBundleError(f"bundle {bundle.root} carries no samples; recompile it with "
                                 "samples to verify it on the device")

    def load(relpath: str) -> dict[str, np.ndarray]:
        try:
            with np.load(io.BytesIO(bundle.read_bytes(relpath)), allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise InvalidBundleError(f"{relpath}: not a readable .npz ({exc}); "
                                     f"{_RECOMPILE}") from None

    inputs = load(samples.path).get("inputs")
    rows = (samples.count,)
    if inputs is None or inputs.dtype != samples.input_dtype or inputs.shape[:1] != rows:
        found = "no 'inputs' array" if inputs is None else f"{inputs.dtype} {inputs.shape}"
        raise InvalidBundleError(f"{samples.path}: 'inputs' should be {samples.count} samples "
                                 f"of {samples.input_dtype}; found {found}; {_RECOMPILE}")
    outputs = load(samples.expected_outputs)
    expected = {}
    for variant in bundle.manifest.variants:
        array = outputs.get(variant.id)
        if array is None or array.shape[:1] != rows:
            found = "nothing" if array is None else f"shape {array.shape}"
            raise InvalidBundleError(
                f"{samples.expected_outputs}: expected outputs of variant {variant.id!r} should "
                f"have {samples.count} rows; found {found}; {_RECOMPILE}")
        expected[variant.id] = array
    return inputs, expected
