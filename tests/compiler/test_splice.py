"""Trained compression units spliced into ONNX: head -> pack -> unpack -> tail."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from splitpack.compiler.codec import CodecSpec, build_codec_modules, codes_shape
from splitpack.compiler.cuts import find_cuts, resolve_cut
from splitpack.compiler.evaluate import evaluate_split
from splitpack.compiler.export import check_onnx, export_onnx
from splitpack.compiler.splice import CODES_NAME, build_variant
from splitpack.compiler.train import compute_cut_features, frozen_tail, train_codec
from splitpack.models import vit_small
from tests import onnx_graphs


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_trained_unit_agrees_with_torch_on_test_split(digits_model, digits_dataset):
    model = digits_model.onnx_model
    cut = resolve_cut(find_cuts(model, digits_model.input_shape), "down2.relu")
    codec = CodecSpec(16, 1, 4)
    features = compute_cut_features(model, cut, digits_dataset)
    tail_module = frozen_tail(features.tail)
    trained = train_codec(features, codec, epochs=2, progress=False, tail_module=tail_module)
    assert trained.train_examples == 2 * (len(digits_dataset.x_train) // 64) * 64
    head, tail = build_variant(model, cut, codec, trained.encoder, trained.decoder)
    evaluation = evaluate_split(head, tail, digits_dataset.x_test, digits_dataset.y_test, codec.bits)
    assert evaluation.codes.dtype == np.uint8 and evaluation.codes.shape[1:] == codes_shape(cut.shape, codec)
    assert evaluation.codes.max() < 2**codec.bits
    with torch.no_grad():
        codes = trained.encoder(torch.from_numpy(features.test))
        torch_predictions = tail_module(trained.decoder(codes)).argmax(-1).numpy()
    agreement = np.mean(torch_predictions == evaluation.predictions)
    assert agreement >= 0.995, agreement
    assert evaluation.accuracy > 90.0  # 2 epochs at 32x compression on a ~98% model


def _check_spliced(model, cut, codec, x):
    encoder, decoder = (m.eval() for m in build_codec_modules(cut.shape, codec))
    head, tail = build_variant(model, cut, codec, encoder, decoder)
    assert [o.name for o in head.graph.output] == [CODES_NAME] == [i.name for i in tail.graph.input]
    head_session, tail_session = _session(head), _session(tail)
    assert head_session.get_outputs()[0].type == "tensor(uint8)"
    for batch in (1, 3):
        codes = head_session.run(None, {head_session.get_inputs()[0].name: x[:batch]})[0]
        assert codes.shape == (batch,) + codes_shape(cut.shape, codec)
        outputs = tail_session.run(None, {CODES_NAME: codes})[0]
        features = _session(compute_head(model, cut)).run(None, {head_session.get_inputs()[0].name: x[:batch]})[0]
        with torch.no_grad():
            expected = frozen_tail(tail_only(model, cut))(decoder(encoder(torch.from_numpy(features)))).numpy()
        np.testing.assert_allclose(outputs, expected, atol=1e-4)


def compute_head(model, cut):
    from splitpack.compiler.split import split_at

    return split_at(model, cut)[0]


def tail_only(model, cut):
    from splitpack.compiler.split import split_at

    return split_at(model, cut)[1]


def test_token_tensor_codec_on_vit():
    torch.manual_seed(0)
    model = export_onnx(vit_small(), (1, 3, 32, 32))
    cuts = find_cuts(model, (1, 3, 32, 32))
    token_cuts = [cut for cut in cuts if len(cut.shape) == 2]
    assert token_cuts, [c.label for c in cuts]
    cut = resolve_cut(cuts, "blocks.0") if any(c.label == "blocks.0" for c in cuts) else token_cuts[0]
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    _check_spliced(model, cut, CodecSpec(16, 1, 4), x)


def test_vector_codec_and_old_opset_graph():
    model = check_onnx(onnx_graphs.pyramid_classifier(11))
    cuts = find_cuts(model, (1, 3, 8, 8))
    x = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32)
    _check_spliced(model, resolve_cut(cuts, "flat"), CodecSpec(2, 1, 2), x)
    _check_spliced(model, resolve_cut(cuts, "concat"), CodecSpec(3, 2, 8), x)
