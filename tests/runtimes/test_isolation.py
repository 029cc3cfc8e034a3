"""The runtimes work on a device that has neither torch, onnx, onnx-graphsurgeon nor sklearn.

A subprocess makes those packages (and splitpack's compiler) unimportable before splitpack is
imported, then serves the test bundle and runs a device request against it over loopback; with
the entropy-coded bundle it also sends entropy-coded codes and a JPEG upload, so the entropy
coder (constriction) and Pillow are shown to work there, and to be all they need. A static
check complements it for imports that only run inside functions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.import_graph import imported_names

ROOT = Path(__file__).resolve().parents[2]
DEVICE_PACKAGES = ("formats", "planning", "runtimes", "serving")
DEVICE_MODULES = ("errors.py", "quiet.py", "_version.py")
HARNESSES = ("splitpack.bench", "splitpack.cli")
FORBIDDEN = ("torch", "onnx", "onnx_graphsurgeon", "sklearn", "splitpack.compiler",
             "splitpack.predictors.accuracy")
# every benchmark harness: the device's `splitpack run` (the CLI) loads only their defaults
RUN_TIME_HARNESSES = tuple(f"splitpack.bench.{path.stem}"
                           for path in sorted((ROOT / "splitpack" / "bench").glob("*.py"))
                           if path.stem not in ("__init__", "defaults"))

SCRIPT = r'''
import importlib.abc
import sys

FORBIDDEN = {forbidden!r}


def _forbidden(name):
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if _forbidden(name):
            raise ImportError(f"{{name}} is not installed on this device (blocked by the test)")
        return None


sys.meta_path.insert(0, Refuse())

import numpy as np
from fastapi.testclient import TestClient

import splitpack.runtimes.backends
import splitpack.cli.runtime  # the device's `splitpack run`
import splitpack.runtimes.netem
from splitpack.formats import read_bundle, read_samples
from splitpack.runtimes.device import DeviceRuntime
from splitpack.serving.edge import BackgroundServer, create_app
from splitpack.formats.variants import normalize_uint8
from splitpack.runtimes.backends import load_backend, load_entropy_tables
from splitpack.formats.wire import decode_payload, encode_payload

bundle_path = sys.argv[1]
bundle = read_bundle(bundle_path)
inputs, expected = read_samples(bundle)
app = create_app(bundle)
wire_id = app.state.edge.wire_bundle_id
message = encode_payload(inputs[:1], bundle_id=wire_id, variant_id="edge", bits=8)
client = TestClient(app)
answer = client.post("/v1/infer", content=message)
assert answer.status_code == 200, answer.text
np.testing.assert_allclose(decode_payload(answer.content)[1][0], expected["edge"][0], atol=1e-4)
coded = []
for variant in bundle.manifest.variants:
    tables = load_entropy_tables(bundle, variant)
    if tables is None:
        continue
    q = variant.quantization
    codes = load_backend(bundle, variant).run(normalize_uint8(inputs[:1], bundle.manifest.preprocessing))
    message = encode_payload(codes, bundle_id=wire_id, variant_id=variant.id, bits=q.bits,
                             scale=q.scale, offset=q.offset, compression="entropy", tables=tables)
    answer = client.post("/v1/infer", content=message)
    assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(decode_payload(answer.content)[1][0], expected[variant.id][0], atol=1e-4)
    coded.append("entropy")
upload = bundle.variant("edge").upload
if upload is not None:
    message = encode_payload(inputs[:1], bundle_id=wire_id, variant_id="edge", bits=8,
                             compression=upload.format, quality=upload.quality)
    answer = client.post("/v1/infer", content=message)
    assert answer.status_code == 200, answer.text
    coded.append(upload.format)

with BackgroundServer(app, "127.0.0.1", 0, start_timeout_s=10) as edge, \
        DeviceRuntime(bundle, edge.url, rtt_ms=1.0) as runtime:  # a free port, then its URL
    result = runtime.infer(inputs[1])
assert not result.fallback and result.mode in ("split", "edge"), result
np.testing.assert_allclose(result.output, expected[result.variant_id][1], atol=1e-4)
leaked = sorted(name for name in sys.modules if _forbidden(name))
assert not leaked, leaked
if coded:
    assert "constriction" in sys.modules and "PIL" in sys.modules, "the coders were not used"
print("ok", result.variant_id, *coded)
'''


@pytest.mark.parametrize("which", ["bitpack", "entropy"])
def test_runtimes_work_without_the_compiler_stack(bundle_path: Path, entropy_bundle_path: Path,
                                                  which: str) -> None:
    path = entropy_bundle_path if which == "entropy" else bundle_path
    script = SCRIPT.format(forbidden=FORBIDDEN + RUN_TIME_HARNESSES)
    done = subprocess.run([sys.executable, "-c", script, str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok ")
    if which == "entropy":
        assert done.stdout.split()[2:] == ["entropy", "entropy", "jpeg"], done.stdout


def test_no_device_module_imports_the_compiler_stack_even_lazily() -> None:
    """What a device or edge installs (formats, planning, runtimes, serve and the leaf
    modules) imports neither the compiler stack nor a benchmark harness, even inside functions."""
    root = ROOT / "splitpack"
    modules = [path for package in DEVICE_PACKAGES for path in sorted((root / package).glob("*.py"))]
    modules += [root / name for name in DEVICE_MODULES]
    assert {"backends.py", "device.py", "edge.py", "entropy.py", "images.py", "wire.py",
            "latency.py", "selector.py"} <= {p.name for p in modules}
    for path in modules:
        bad = [name for name in imported_names(path)
               if any(name == f or name.startswith(f + ".") for f in FORBIDDEN + HARNESSES)]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
