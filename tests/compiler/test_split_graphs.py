"""cuts and split on ONNX graphs from other exporters (built here with onnx.helper / text syntax)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from splitpack.compiler.cuts import find_cuts, resolve_cut
from splitpack.compiler.export import check_onnx
from splitpack.compiler.graph import graph_inputs
from splitpack.compiler.split import split_at
from splitpack.errors import UnsupportedCutError
from tests import onnx_graphs

ATOL = 1e-5


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run_split(model, cut, feeds):
    head, tail = split_at(model, cut)
    assert [o.name for o in head.graph.output] == [i.name for i in graph_inputs(tail)]
    head_out = _session(head).run(None, feeds)
    assert len(head_out) == 1
    tail_session = _session(tail)
    return tail_session.run(None, {tail_session.get_inputs()[0].name: head_out[0]})


def _assert_split_equals_full(model, cuts, feeds_list):
    full = _session(model)
    for feeds in feeds_list:
        expected = full.run(None, feeds)
        for cut in cuts:
            got = _run_split(model, cut, feeds)
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                assert g.shape == e.shape and g.dtype == e.dtype
                np.testing.assert_allclose(g, e, atol=ATOL, rtol=0, err_msg=f"cut {cut.label}")


@pytest.mark.parametrize("opset", [11, 12, 13])
def test_pyramid_classifier_cuts_and_dynamic_spatial_split(opset):
    model = check_onnx(onnx_graphs.pyramid_classifier(opset))
    cuts = find_cuts(model, (1, 3, 16, 16))
    names = [cut.name for cut in cuts]
    assert names == ["conv1", "relu1", "concat", "fuse", "fuse_relu", "pool", "flat"]
    for bypassed in ("conv2", "relu2", "up"):
        assert bypassed not in names
    by_name = {cut.name: cut for cut in cuts}
    assert by_name["relu1"].shape == (4, 16, 16) and by_name["relu1"].bytes_per_sample == 4 * 16 * 16 * 4
    assert by_name["concat"].shape == (12, 16, 16)
    # conv1: 2 * (4*16*16 outputs) * (3*3*3) MACs per output
    assert by_name["conv1"].head_flops == 2 * 4 * 16 * 16 * 27
    assert all(c.head_flops + c.tail_flops == cuts[0].head_flops + cuts[0].tail_flops for c in cuts)
    assert [c.position for c in cuts] == sorted(c.position for c in cuts)
    rng = np.random.default_rng(0)
    feeds = [
        {"image": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)},
        {"image": rng.normal(size=(3, 3, 24, 20)).astype(np.float32)},  # other batch and spatial size
    ]
    _assert_split_equals_full(model, cuts, feeds)


def test_feature_pyramid_two_outputs():
    model = check_onnx(onnx_graphs.feature_pyramid(13))
    cuts = find_cuts(model, (1, 3, 8, 8))
    assert [cut.name for cut in cuts] == ["conv1", "relu1"]
    rng = np.random.default_rng(1)
    _assert_split_equals_full(model, cuts, [{"image": rng.normal(size=(2, 3, 12, 8)).astype(np.float32)}])


@pytest.mark.parametrize("opset", [12, 13])
def test_shape_computed_flatten(opset):
    model = check_onnx(onnx_graphs.shape_flatten_mlp(opset))
    cuts = find_cuts(model, (1, 2, 4, 4))
    names = [cut.name for cut in cuts]
    # Reshape reads Shape(r): r is the only cut before the flatten; every tensor after is a cut.
    assert names == ["r", "flat", "h", "hb", "ha"]
    rng = np.random.default_rng(2)
    _assert_split_equals_full(model, cuts, [{"x": rng.normal(size=(b, 2, 4, 4)).astype(np.float32)} for b in (1, 3)])


def test_two_inputs_are_supported_after_the_join():
    model = check_onnx(onnx_graphs.two_input_model())
    cuts = find_cuts(model, (1, 4))
    assert [cut.name for cut in cuts] == ["s", "t"]
    head, _ = split_at(model, cuts[0])
    assert [i.name for i in graph_inputs(head)] == ["a", "b"]
    rng = np.random.default_rng(3)
    feeds = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(3, 4)).astype(np.float32)}
    _assert_split_equals_full(model, cuts, [feeds])


def test_split_does_not_modify_its_input():
    model = check_onnx(onnx_graphs.pyramid_classifier(13))
    before = model.SerializeToString()
    split_at(model, find_cuts(model, (1, 3, 8, 8))[1])
    assert model.SerializeToString() == before


@pytest.mark.parametrize(
    "name, message",
    [
        ("relu2", r"'relu2' is not a valid cut: a path from the input to the output bypasses it.*near it: conv1, relu1, concat"),
        ("up", r"bypasses it"),
        ("no_such_tensor", r"not a tensor or module of this model; valid cuts include"),
    ],
)
def test_resolve_invalid_cut(name, message):
    model = check_onnx(onnx_graphs.pyramid_classifier(13))
    cuts = find_cuts(model, (1, 3, 8, 8))
    with pytest.raises(UnsupportedCutError, match=message):
        resolve_cut(cuts, name, model)
