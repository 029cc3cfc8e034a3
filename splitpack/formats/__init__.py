"""splitpack.formats: what is written and read — the wire payload (bit-packed, entropy-coded or
image codes), the typed bundle manifest, bundles and their archives, and the variant record.

The bottom of the order: these modules import only ``splitpack.errors`` and each other.
"""

from splitpack.formats.bundle import (
    Bundle, pack_bundle, read_bundle, read_samples, safe_relpath, verify_files, write_bundle,
)  # fmt: skip
from splitpack.formats.manifest import (
    SCHEMA_VERSION, Manifest, Variant, compute_bundle_id, manifest_to_json, parse_manifest,
)  # fmt: skip

__all__ = [
    "SCHEMA_VERSION", "Manifest", "Variant", "Bundle", "parse_manifest", "manifest_to_json",
    "compute_bundle_id", "safe_relpath", "write_bundle", "read_bundle", "verify_files",
    "pack_bundle", "read_samples",
]  # fmt: skip
