"""Bundles on disk: round trips, atomic replacement, tampering, and hostile archives."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from splitpack.errors import InvalidBundleError
from splitpack.formats import (
    Bundle, pack_bundle, read_bundle, read_samples, verify_files, write_bundle,
)  # fmt: skip
from splitpack.formats.archive import extract_archive
from splitpack.formats.manifest import MANIFEST_NAME, manifest_to_json
from tests.formats.test_manifest import ARTIFACTS, manifest_fields


def _samples_npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def bundle_files(tmp_path: Path) -> dict[str, bytes | Path]:
    """The artifacts, one of them given as a source file, plus sample inputs and outputs."""
    source = tmp_path / "sources" / "tail.onnx"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(ARTIFACTS["variants/l3/tail.onnx"])
    samples = _samples_npz(inputs=np.arange(3 * 64, dtype=np.uint8).reshape(3, 1, 8, 8))
    outputs = _samples_npz(**{v: np.full((3, 10), i, np.float32)
                              for i, v in enumerate(["local", "edge", "l3_c4b4"])})
    return {**ARTIFACTS, "variants/l3/tail.onnx": source, "samples/inputs.npz": samples,
            "samples/expected.npz": outputs}


def bundle_manifest_fields() -> dict[str, Any]:
    return {**manifest_fields(), "samples": {
        "path": "samples/inputs.npz", "count": 3, "input_dtype": "uint8",
        "expected_outputs": "samples/expected.npz"}}


@pytest.fixture
def written(tmp_path: Path) -> Path:
    write_bundle(tmp_path / "bundle", bundle_manifest_fields(), bundle_files(tmp_path))
    return tmp_path / "bundle"


def _assert_same_contents(bundle: Bundle, files: dict[str, bytes | Path]) -> None:
    assert sorted(bundle.manifest.files) == sorted(files)
    for name, source in files.items():
        expected = source.read_bytes() if isinstance(source, Path) else source
        assert bundle.read_bytes(name) == expected, name


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir())


def test_folder_round_trip(tmp_path: Path) -> None:
    files = bundle_files(tmp_path)
    manifest = write_bundle(tmp_path / "bundle", bundle_manifest_fields(), files)
    bundle = read_bundle(tmp_path / "bundle")
    assert bundle.manifest == manifest
    assert (tmp_path / "bundle" / MANIFEST_NAME).read_text() == manifest_to_json(manifest)
    _assert_same_contents(bundle, files)
    assert bundle.variant("l3_c4b4").codec == "c4s1b4"
    assert _siblings(tmp_path / "bundle") == ["bundle", "sources"]  # no temporary folder left


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz"])
def test_archive_round_trip_is_deterministic(written: Path, tmp_path: Path, suffix: str) -> None:
    first = pack_bundle(written, tmp_path / f"one{suffix}")
    second = pack_bundle(written, tmp_path / "sub" / f"two{suffix}")
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    listed = sorted(read_bundle(written).manifest.files)
    assert [m.name for m in members] == [MANIFEST_NAME, *listed]
    assert {(m.mtime, m.uid, m.gid, m.mode) for m in members} == {(0, 0, 0, 0o644)}
    bundle = read_bundle(first, extract_to=tmp_path / "extracted")
    assert bundle.root == tmp_path / "extracted"
    assert bundle.manifest == read_bundle(written).manifest
    _assert_same_contents(bundle, bundle_files(tmp_path))
    assert not list(tmp_path.glob("sub/.two*"))  # no partial archive left


def test_archives_made_by_other_tools_are_read(written: Path, tmp_path: Path) -> None:
    zipped = tmp_path / "bundle.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in sorted(written.rglob("*")):
            archive.write(path, path.relative_to(written).as_posix())
    nested = tmp_path / "nested.tar.gz"  # `tar czf nested.tar.gz bundle/`: one top folder
    with tarfile.open(nested, "w:gz") as archive:
        archive.add(written, arcname="bundle")
    expected = read_bundle(written).manifest
    assert read_bundle(zipped).manifest == expected
    assert read_bundle(nested).manifest == expected


def test_extra_files_are_ignored_and_never_handed_out(written: Path) -> None:
    (written / "notes.txt").write_text("not listed")
    bundle = read_bundle(written)
    with pytest.raises(InvalidBundleError, match="'notes.txt' is not a file of bundle .* listed"):
        bundle.path("notes.txt")
    with pytest.raises(InvalidBundleError, match="no variant 'l9'; valid ids: local, edge, l3_"):
        bundle.variant("l9")


def test_samples_are_read_and_checked(written: Path) -> None:
    inputs, expected = read_samples(read_bundle(written))
    assert inputs.dtype == np.uint8 and inputs.shape == (3, 1, 8, 8)
    assert sorted(expected) == ["edge", "l3_c4b4", "local"]
    np.testing.assert_array_equal(expected["edge"], np.full((3, 10), 1, np.float32))


def test_samples_with_a_missing_variant_are_refused(tmp_path: Path) -> None:
    files = {**bundle_files(tmp_path), "samples/expected.npz": _samples_npz(
        local=np.zeros((3, 10)), edge=np.zeros((3, 10)))}
    write_bundle(tmp_path / "bundle", bundle_manifest_fields(), files)
    with pytest.raises(InvalidBundleError, match="'l3_c4b4' should have 3 rows; found nothing"):
        read_samples(read_bundle(tmp_path / "bundle"))


def test_rewrite_replaces_the_old_bundle(written: Path, tmp_path: Path) -> None:
    fields = bundle_manifest_fields()
    fields["model_id"] = "second"
    write_bundle(written, fields, bundle_files(tmp_path))
    assert read_bundle(written).manifest.model_id == "second"
    assert _siblings(written) == ["bundle", "sources"]


@pytest.mark.parametrize("break_inputs,match", [
    (lambda fields, files: files.__setitem__("variants/l3/tail.onnx", Path("/no/such/tail.onnx")),
     "its source '/no/such/tail.onnx' cannot be read"),
    (lambda fields, files: files.pop("variants/l3/tail.onnx"),
     "paths not listed in files: variants\\[l3_c4b4\\].artifacts.tail"),
    (lambda fields, files: fields.__setitem__("num_classes", 0), "'num_classes'"),
    (lambda fields, files: files.__setitem__("../escape.onnx", b"x"), "'\\.\\.' component"),
    (lambda fields, files: files.__setitem__("Local/model.onnx", b"x"), "differ only in case"),
    (lambda fields, files: files.__setitem__("local/model.onnx/x", b"x"), "both files and folders"),
    (lambda fields, files: fields.__setitem__("files", {}), "'files'\\] is computed by"),
    (lambda fields, files: files.__setitem__("a.onnx", "text"), "must be bytes or a pathlib.Path"),
])  # fmt: skip
def test_failed_write_keeps_the_old_bundle(written: Path, tmp_path: Path,
                                           break_inputs: Callable[..., Any], match: str) -> None:
    before = {p: p.read_bytes() for p in sorted(written.rglob("*")) if p.is_file()}
    fields, files = bundle_manifest_fields(), bundle_files(tmp_path)
    fields["model_id"] = "second"
    break_inputs(fields, files)
    with pytest.raises(InvalidBundleError, match=match):
        write_bundle(written, fields, files)
    assert {p: p.read_bytes() for p in sorted(written.rglob("*")) if p.is_file()} == before
    assert read_bundle(written).manifest.model_id == "tiny-cnn"
    assert _siblings(written) == ["bundle", "sources"]


def test_a_folder_that_is_not_a_bundle_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(InvalidBundleError, match="exists and is not a bundle"):
        write_bundle(tmp_path / "photos", bundle_manifest_fields(), bundle_files(tmp_path))
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"meow"


def _edit_manifest(mutate: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def tamper(root: Path) -> None:
        data = json.loads((root / MANIFEST_NAME).read_text())
        mutate(data)
        (root / MANIFEST_NAME).write_text(json.dumps(data))
    return tamper


def _flip_byte(root: Path) -> None:
    path = root / "variants/l3/head.onnx"
    data = bytearray(path.read_bytes())
    data[3] ^= 0x01
    path.write_bytes(bytes(data))


def _link_outside(root: Path) -> None:
    outside = root.parent / "outside.onnx"
    outside.write_bytes(ARTIFACTS["edge/model.onnx"])
    (root / "edge/model.onnx").unlink()
    (root / "edge/model.onnx").symlink_to(outside)


def _variants(mutate: Callable[[list[dict[str, Any]]], Any]) -> Callable[[Path], None]:
    return _edit_manifest(lambda data: data.__setitem__("variants", mutate(data["variants"])))


TAMPERING = [
    ("changed artifact byte", _flip_byte,
     r"variants/l3/head\.onnx: sha256 mismatch \(manifest \w+…, file \w+…\); the bundle was "
     r"modified or corrupted — recompile or re-copy it"),
    ("truncated artifact", lambda root: (root / "local/model.onnx").write_bytes(b"loc"),
     r"local/model\.onnx: size mismatch \(manifest 11 bytes, file 3\)"),
    ("missing artifact", lambda root: (root / "variants/l3/tail.onnx").unlink(),
     r"variants/l3/tail\.onnx: missing \(manifest lists 10 bytes\)"),
    ("artifact linked outside", _link_outside,
     "edge/model.onnx: not a regular file inside the bundle"),
    ("missing manifest", lambda root: (root / MANIFEST_NAME).unlink(),
     "manifest.json not found in .*; a bundle folder holds manifest.json"),
    ("manifest not JSON", lambda root: (root / MANIFEST_NAME).write_text("{"),
     "not valid UTF-8 JSON"),
    ("edited accuracy", _edit_manifest(lambda d: d["variants"][2].__setitem__("accuracy", 99.9)),
     r"manifest\.json: bundle_id \w+… does not match the manifest's contents"),
    ("edited file hash", _edit_manifest(lambda d: d["files"]["edge/model.onnx"].__setitem__(
        "sha256", "0" * 64)), "bundle_id .* does not match"),
    ("unknown key", _edit_manifest(lambda d: d["variants"][0].__setitem__("colour", "red")),
     r"manifest\.json: unknown key 'variants\.0\.colour'"),
    ("unknown schema version", _edit_manifest(lambda d: d.__setitem__("schema_version", 7)),
     r"schema version 7 is not supported by this splitpack \(supports 2\)"),
    ("path with ../", _edit_manifest(lambda d: d["variants"][2]["artifacts"].__setitem__(
        "tail", "../outside.onnx")), r"path '\.\./outside\.onnx' is not allowed"),
    ("absolute path", _edit_manifest(lambda d: d.__setitem__("predictor", "/etc/passwd")),
     r"'predictor': path '/etc/passwd' is not allowed in a bundle: it is absolute"),
    ("duplicate variant ids", _variants(lambda vs: vs + [vs[2]]), "variant ids must be unique"),
    ("no local variant", _variants(lambda vs: vs[1:]), "exactly one local variant; found 0"),
    ("no edge variant", _variants(lambda vs: vs[:1] + vs[2:]), "exactly one edge variant; found 0"),
]  # fmt: skip


@pytest.mark.parametrize("tamper,match", [case[1:] for case in TAMPERING],
                         ids=[case[0] for case in TAMPERING])
def test_tampered_bundles_are_refused(written: Path, tmp_path: Path,
                                      tamper: Callable[[Path], None], match: str) -> None:
    tamper(written)
    with pytest.raises(InvalidBundleError, match=match):
        read_bundle(written)
    if tamper is _link_outside:
        return  # archived, the link itself is refused (see the hostile archive table)
    # The same tampering inside an archive (one top folder, as `tar czf` makes) is caught too.
    archive = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(written, arcname="bundle")
    with pytest.raises(InvalidBundleError, match=match):
        read_bundle(archive, extract_to=tmp_path / "x")


def test_read_bytes_rechecks_the_hash(written: Path) -> None:
    bundle = read_bundle(written)
    _flip_byte(written)
    with pytest.raises(InvalidBundleError, match="variants/l3/head.onnx: sha256 mismatch"):
        bundle.read_bytes("variants/l3/head.onnx")
    with pytest.raises(InvalidBundleError, match="head.onnx: sha256 mismatch"):
        verify_files(bundle)


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _zip(path: Path, names: list[str], *, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            info = zipfile.ZipInfo(name)
            if symlink:
                info.external_attr = (0o120777 << 16)
            archive.writestr(info, b"/etc/passwd" if symlink else b"payload")
    return path


HOSTILE_ARCHIVES = [
    ("tar with ../", lambda d: _tar(d / "a.tar.gz", [(_member("ok.txt"), b"fine"),
                                                    (_member("../evil.txt"), b"owned")]),
     r"member path '\.\./evil\.txt' is not allowed.*'\.\.' component"),
    ("tar with nested ../", lambda d: _tar(d / "a.tgz", [(_member("a/../../evil.txt"), b"x")]),
     r"'\.\.' component"),
    ("tar with absolute path", lambda d: _tar(d / "a.tar.gz", [
        (_member(str(d / "evil.txt")), b"owned")]), "it is absolute"),
    ("tar with symlink", lambda d: _tar(d / "a.tar.gz", [
        (_member("link", tarfile.SYMTYPE, "/etc"), b""), (_member("link/evil.txt"), b"x")]),
     "member 'link' is a symlink; a bundle archive holds only regular files and folders"),
    ("tar with hardlink", lambda d: _tar(d / "a.tar.gz", [
        (_member("hard", tarfile.LNKTYPE, "/etc/passwd"), b"")]), "member 'hard' is a hardlink"),
    ("tar with device", lambda d: _tar(d / "a.tar.gz", [(_member("dev", tarfile.CHRTYPE), b"")]),
     "member 'dev' is a device or fifo"),
    ("tar with repeated member", lambda d: _tar(d / "a.tar.gz", [
        (_member("m.txt"), b"1"), (_member("m.txt"), b"2")]), "'m.txt' appears more than once"),
    ("tar with file and folder of one name", lambda d: _tar(d / "a.tar.gz", [
        (_member("m"), b"1"), (_member("m", tarfile.DIRTYPE), b"")]), "'m' appears more than once"),
    ("tar with case twins", lambda d: _tar(d / "a.tar.gz", [
        (_member("M.txt"), b"1"), (_member("m.txt"), b"2")]), "differ only in case"),
    ("zip with ../", lambda d: _zip(d / "a.zip", ["ok.txt", "../evil.txt"]), r"'\.\.' component"),
    ("zip with absolute path", lambda d: _zip(d / "a.zip", ["/evil.txt"]), "it is absolute"),
    ("zip with backslash", lambda d: _zip(d / "a.zip", ["..\\evil.txt"]), "backslash"),
    ("zip with symlink", lambda d: _zip(d / "a.zip", ["link"], symlink=True),
     "'link' is a symlink"),
    ("too large", lambda d: _tar(d / "a.tar.gz", [(_member("big.bin"), b"x" * 2048)]),
     "more than 10000 members or 1024 bytes unpacked"),
    ("not an archive", lambda d: (d / "a.tar.gz").write_bytes(b"plain text") and d / "a.tar.gz",
     "cannot be extracted"),
]  # fmt: skip


@pytest.mark.parametrize("make,match", [case[1:] for case in HOSTILE_ARCHIVES],
                         ids=[case[0] for case in HOSTILE_ARCHIVES])
def test_hostile_archives_write_nothing_outside(tmp_path: Path, make: Callable[[Path], Path],
                                                match: str) -> None:
    (tmp_path / "in").mkdir()
    archive = make(tmp_path / "in")
    target = tmp_path / "out" / "x"
    with pytest.raises(InvalidBundleError, match=match):
        read_bundle(archive, extract_to=target, max_bytes=1024)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == ["in", f"in/{archive.name}", "out"]  # target removed, nothing escaped


def test_a_failed_read_removes_its_scratch_folder(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    archive = _tar(tmp_path / "a.tar.gz", [(_member("notes.txt"), b"no manifest here")])
    with pytest.raises(InvalidBundleError, match="manifest.json not found"):
        read_bundle(archive)
    assert list(scratch.iterdir()) == []


def test_extraction_needs_an_empty_folder(written: Path, tmp_path: Path) -> None:
    archive = pack_bundle(written, tmp_path / "b.tar.gz")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(InvalidBundleError, match="exists and is not an empty folder"):
        extract_archive(archive, tmp_path / "busy")
    assert sorted(os.listdir(tmp_path / "busy")) == ["keep.txt"]


@pytest.mark.parametrize("call,match", [
    (lambda d: read_bundle(d / "nowhere"), "does not exist"),
    (lambda d: pack_bundle(d / "bundle", d / "b.zip"), r"must end in \.tar\.gz or \.tgz"),
    (lambda d: pack_bundle(d / "nowhere", d / "b.tgz"), "is not a bundle folder"),
    (lambda d: read_bundle((d / "b.rar").write_bytes(b"x") and d / "b.rar"), "allowed suffixes"),
])  # fmt: skip
def test_bad_paths(written: Path, tmp_path: Path, call: Callable[[Path], Any], match: str) -> None:
    with pytest.raises(InvalidBundleError, match=match):
        call(tmp_path)
