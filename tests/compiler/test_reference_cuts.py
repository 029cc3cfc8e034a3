"""Every reference architecture, every valid cut: head then tail in ONNX Runtime equals the torch
model; the cut list respects residual, dense and attention blocks."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from splitpack.compiler.cuts import find_cuts
from splitpack.compiler.export import export_onnx
from splitpack.compiler.split import split_at
from splitpack.models import REFERENCE_INPUT_SHAPES, REFERENCE_MODELS

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=sorted(REFERENCE_MODELS))
def exported(request):
    torch.manual_seed(0)
    module = REFERENCE_MODELS[request.param]().eval()
    shape = (1,) + REFERENCE_INPUT_SHAPES[request.param]
    model = export_onnx(module, shape)
    return request.param, module, model, find_cuts(model, shape)


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_every_cut_reproduces_the_torch_model(exported):
    name, module, model, cuts = exported
    assert len(cuts) >= 8, (name, [c.label for c in cuts])
    rng = np.random.default_rng(0)
    inputs = {batch: rng.normal(size=(batch,) + REFERENCE_INPUT_SHAPES[name]).astype(np.float32) for batch in (1, 3)}
    with torch.no_grad():
        expected = {batch: module(torch.from_numpy(x)).numpy() for batch, x in inputs.items()}
    for cut in cuts:
        head, tail = split_at(model, cut)
        assert [o.name for o in head.graph.output] == [i.name for i in tail.graph.input] == [cut.name]
        head_session, tail_session = _session(head), _session(tail)
        for batch, x in inputs.items():
            feature = head_session.run(None, {"input": x})[0]
            assert feature.shape == (batch,) + cut.shape and feature.dtype == np.float32
            got = tail_session.run(None, {cut.name: feature})[0]
            assert got.shape == expected[batch].shape and got.dtype == expected[batch].dtype
            difference = np.max(np.abs(got - expected[batch]))
            assert difference <= TOLERANCE, (name, cut.label, batch, difference)


# Module paths of block outputs that must be cuts, and prefixes of modules inside blocks whose
# tensors must not be (a skip connection or a concatenation bypasses them).
BLOCKS = {
    "resnet_small": (["layer1.0", "layer2.0", "layer3.0"],
                     ["layer1.0.conv", "layer1.0.relu1", "layer2.0.conv", "layer2.0.shortcut", "layer3.0.conv",
                      "layer3.0.relu1", "layer3.0.shortcut"]),
    "cifar_resnet20": ([f"layer{stage}.{block}" for stage in (1, 2, 3) for block in (0, 1, 2)],
                       [f"layer{stage}.{block}.{part}" for stage in (1, 2, 3) for block in (0, 1, 2)
                        for part in ("conv1", "relu1", "conv2")]),
    "cifar_mobilenetv2": (["blocks.2", "blocks.5", "blocks.8", "blocks.10"],
                          ["blocks.2.layers", "blocks.5.layers", "blocks.8.layers", "blocks.10.layers"]),
    "mobilenetv2_small": (["blocks.0", "blocks.2", "blocks.4", "blocks.6"],
                          ["blocks.0.layers", "blocks.2.layers", "blocks.4.layers", "blocks.6.layers"]),
    "densenet_small": (["features.block1.layer0", "features.block1.layer1", "features.block3.layer2"],
                       [f"features.block{b}.layer{n}.{part}" for b in (1, 2, 3) for n in (0, 1, 2)
                        for part in ("norm1", "relu1", "conv1", "conv2")]),
    "vit_small": (["blocks.0", "blocks.1"],
                  ["blocks.0.attn", "blocks.0.mlp", "blocks.0.norm", "blocks.1.attn", "blocks.1.mlp", "blocks.1.norm"]),
    "digits_cnn": (["block1", "block2"], ["block1.conv", "block1.relu1", "block2.conv", "block2.relu1"]),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_cut_list_respects_blocks(name):
    torch.manual_seed(0)
    shape = (1,) + REFERENCE_INPUT_SHAPES[name]
    model = export_onnx(REFERENCE_MODELS[name](), shape)
    cuts = find_cuts(model, shape)
    outputs, insides = BLOCKS[name]
    labels = {cut.label for cut in cuts}
    paths = [cut.module_path or "" for cut in cuts]
    for block in outputs:
        assert block in labels, (name, block, sorted(labels))
    for inside in insides:
        offending = [p for p in paths if p == inside or p.startswith(inside + ".")]
        assert not offending, (name, inside, offending)
    # and those insides exist in the graph: the assertion above is not vacuous
    scopes = {node.name for node in model.graph.node}
    for inside in insides:
        parts = inside.split(".")
        assert any(all(part in scope for part in parts) for scope in scopes), (name, inside)
