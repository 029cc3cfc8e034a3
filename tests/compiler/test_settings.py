"""The work folder's key (``CompileSettings.fingerprint``) follows what the model, weights and
npz paths hold, not only their names: a file overwritten in place is compiled anew."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitpack.compiler.settings import CompileSettings


@pytest.mark.parametrize("field, name", [("model", "net.onnx"), ("data", "set.npz"),
                                         ("weights", "w.pt")])
def test_the_fingerprint_changes_with_the_contents_of_the_files_it_names(tmp_path: Path, field,
                                                                         name) -> None:
    path = tmp_path / name
    values = {"model": "splitpack.models:digits_cnn", "data": "digits"}
    values[field] = f"npz:{path}" if field == "data" else str(path)
    path.write_bytes(b"first")
    first = CompileSettings(**values).fingerprint()
    assert CompileSettings(**values).fingerprint() == first
    path.write_bytes(b"second")
    assert CompileSettings(**values).fingerprint() != first
    assert CompileSettings(**values, variants=2).fingerprint() == CompileSettings(**values).fingerprint()
