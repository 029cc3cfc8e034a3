"""splitpack.packaging: the typed bundle manifest, and writing, reading and archiving bundles."""

from splitpack.packaging.bundle import (
    Bundle, pack_bundle, read_bundle, read_samples, safe_relpath, verify_files, write_bundle,
)  # fmt: skip
from splitpack.packaging.manifest import (
    SCHEMA_VERSION, Manifest, Variant, compute_bundle_id, manifest_to_json, parse_manifest,
)  # fmt: skip

__all__ = [
    "SCHEMA_VERSION", "Manifest", "Variant", "Bundle", "parse_manifest", "manifest_to_json",
    "compute_bundle_id", "safe_relpath", "write_bundle", "read_bundle", "verify_files",
    "pack_bundle", "read_samples",
]  # fmt: skip
