"""Shared fixtures: a trained digits reference model (trained once per test session), and the
small real bundles of :mod:`tests.bundles` (built once per session, where a test asks)."""

from __future__ import annotations

import pytest

from tests.bundles import (  # noqa: F401  (fixtures, found by pytest by name)
    bundle, bundle_path, entropy_bundle, entropy_bundle_path, split_ids, wire_id,
)


@pytest.fixture(scope="session")
def digits_dataset():
    from splitpack.datasets import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_weights(tmp_path_factory):
    """Path of a digits_cnn state_dict trained for 3 epochs (about 98% test accuracy)."""
    from splitpack.models.digits import train_digits_reference

    path = tmp_path_factory.mktemp("digits") / "digits_cnn.pt"
    train_digits_reference(path, epochs=3, progress=False)
    return path


@pytest.fixture(scope="session")
def digits_model(digits_weights):
    """The trained digits model loaded through splitpack's model spec path."""
    from splitpack.compiler.export import load_model

    return load_model("splitpack.models:digits_cnn", weights=digits_weights, input_shape=(1, 1, 16, 16))
