"""Trained compression units spliced into ONNX: head -> pack -> unpack -> tail."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from splitpack.compiler.codec import CodecSpec, codes_shape
from splitpack.compiler.codec_modules import build_codec_modules
from splitpack.compiler.cuts import find_cuts, resolve_cut
from splitpack.compiler.evaluate import evaluate_model, evaluate_split
from splitpack.compiler.export import check_onnx, export_onnx
from splitpack.compiler.splice import CODES_NAME, build_variant, with_initializers
from splitpack.compiler.train import compute_cut_features, frozen_tail, train_codec
from splitpack.errors import InternalError
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
    held = len(digits_dataset.x_train) // 10  # held out to keep only improvements
    assert trained.train_examples == 2 * ((len(digits_dataset.x_train) - held) // 64) * 64
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


def _features_at(digits_model, digits_dataset, label):
    model = digits_model.onnx_model
    cut = resolve_cut(find_cuts(model, digits_model.input_shape), label)
    return model, cut, compute_cut_features(model, cut, digits_dataset)


def test_calibrated_quantization_needs_no_training_and_is_near_lossless_at_8_bits(digits_model, digits_dataset):
    model, cut, features = _features_at(digits_model, digits_dataset, "down1.relu")
    codec = CodecSpec.calibrated(8)
    trained = train_codec(features, codec, epochs=3, progress=False)
    assert trained.train_examples == 0 and trained.tail_weights is None
    with torch.no_grad():
        restored = trained.decoder(trained.encoder(torch.from_numpy(features.test))).numpy()
    assert restored.shape == features.test.shape and restored.dtype == np.float32
    # per-channel ranges from the training features: error well under 1 % of the feature range
    assert np.abs(restored - features.test).mean() < 0.005 * (features.train.max() - features.train.min())
    head, tail = build_variant(model, cut, codec, trained.encoder, trained.decoder)
    evaluation = evaluate_split(head, tail, digits_dataset.x_test, digits_dataset.y_test, 8)
    assert evaluation.codes.shape[1:] == cut.shape
    full = evaluate_model(model, digits_dataset.x_test, digits_dataset.y_test)
    assert abs(evaluation.accuracy - full) <= 100 / len(digits_dataset.y_test) + 1e-9  # at most one image


def test_straight_through_quantizer_passes_gradients_inside_its_range():
    from splitpack.compiler.codec_modules import Quantizer

    quantizer = Quantizer(2, 4, channel_dim=-1, low=np.zeros(2, np.float32), step=np.full(2, 0.1, np.float32)).train()
    z = torch.tensor([[0.52, 3.0], [-1.0, 0.77]], requires_grad=True)  # in range, above, below, in range
    out = quantizer(z)
    np.testing.assert_allclose(out.detach().numpy(), [[0.5, 1.5], [0.0, 0.8]], atol=1e-6)  # rounded, clipped
    out.sum().backward()
    np.testing.assert_allclose(z.grad.numpy(), [[1.0, 0.0], [0.0, 1.0]])  # identity inside, zero outside
    assert quantizer.low.grad is not None and quantizer.log_step.grad is not None  # the range is learned
    assert torch.all(quantizer.low.grad != 0) and torch.all(quantizer.log_step.grad != 0)
    codes = quantizer.eval()(z.detach())
    assert codes.dtype == torch.uint8 and codes.tolist() == [[5, 15], [0, 8]]


def test_training_that_does_not_help_on_held_out_features_is_not_kept(digits_model, digits_dataset):
    _, cut, features = _features_at(digits_model, digits_dataset, "down1.relu")
    codec = CodecSpec(cut.shape[0], 1, 8)  # starts as q8, about as good as it gets
    ruined = train_codec(features, codec, epochs=1, lr=10.0, progress=False)  # a step size that wrecks it
    assert ruined.kept == ("unit:initial",)
    initial = build_codec_modules(cut.shape, codec, features.train[_train_rows(len(features.train))])
    x = torch.from_numpy(features.test)
    with torch.no_grad():
        np.testing.assert_array_equal(ruined.encoder(x).numpy(), initial[0].eval()(x).numpy())


def _train_rows(count: int) -> np.ndarray:
    from splitpack.compiler.train import _holdout

    return _holdout(count, 0)[0]


def test_a_unit_keeping_every_channel_starts_as_calibrated_quantization(digits_model, digits_dataset):
    _, cut, features = _features_at(digits_model, digits_dataset, "down1.relu")
    x = torch.from_numpy(features.test)
    calibrated = build_codec_modules(cut.shape, CodecSpec.calibrated(4), features.train)
    learned = build_codec_modules(cut.shape, CodecSpec(cut.shape[0], 1, 4), features.train)
    with torch.no_grad():
        codes_calibrated = calibrated[0].eval()(x)
        codes_learned = learned[0].eval()(x)
        np.testing.assert_array_equal(codes_learned.numpy(), codes_calibrated.numpy())
        np.testing.assert_allclose(learned[1].eval()(codes_learned).numpy(),
                                   calibrated[1].eval()(codes_calibrated).numpy(), atol=1e-6)


def test_projection_starts_at_principal_components(digits_model, digits_dataset):
    _, cut, features = _features_at(digits_model, digits_dataset, "stem.relu")
    x = torch.from_numpy(features.test)
    codec = CodecSpec(4, 2, 8)
    pca = [m.eval() for m in build_codec_modules(cut.shape, codec, features.train)]
    torch.manual_seed(0)
    random = [m.eval() for m in build_codec_modules(cut.shape, codec)]
    with torch.no_grad():
        pca_error = float(((pca[1](pca[0](x)) - x) ** 2).mean())
        random_error = float(((random[1](random[0](x)) - x) ** 2).mean())
    assert pca_error < 0.5 * float(x.var()) and pca_error < 0.5 * random_error


def test_tail_fine_tuning_changes_the_tail_only(digits_model, digits_dataset):
    model, cut, features = _features_at(digits_model, digits_dataset, "down2.relu")
    tail_module = frozen_tail(features.tail)
    learned = train_codec(features, CodecSpec(4, 2, 2), epochs=2, progress=False, tail_module=tail_module)
    tuned = train_codec(features, CodecSpec(4, 2, 2, "finetuned"), epochs=2, progress=False,
                        tail_module=tail_module, start_from=learned)
    assert tuned.encoder is learned.encoder and tuned.tail_weights
    assert tuned.tail_seconds > 0 and tuned.train_seconds > learned.train_seconds
    head_a, tail_a = build_variant(model, cut, learned.codec, learned.encoder, learned.decoder)
    head_b, tail_b = build_variant(model, cut, tuned.codec, tuned.encoder, tuned.decoder, tuned.tail_weights)
    assert head_a.SerializeToString() == head_b.SerializeToString()  # the device's artifact is unchanged
    evaluation = evaluate_split(head_b, tail_b, digits_dataset.x_test, digits_dataset.y_test, 2)
    with torch.no_grad():
        from splitpack.compiler.split import split_at

        tuned_tail = frozen_tail(with_initializers(split_at(model, cut)[1], tuned.tail_weights))
        expected = tuned_tail(tuned.decoder(tuned.encoder(torch.from_numpy(features.test)))).numpy()
    np.testing.assert_allclose(evaluation.outputs, expected, atol=1e-4)
    changed = [name for name, value in tuned.tail_weights.items()
               if not np.array_equal(value, learned_value(features.tail, name))]
    # 16x16 codes of 2 bits behind a frozen tail leave room: the fine-tuning is kept and moved weights
    assert tuned.kept[-1] == "tail:trained" and changed


def learned_value(tail, name):
    from onnx import numpy_helper

    return next(numpy_helper.to_array(init) for init in tail.graph.initializer if init.name == name)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"no_such_weight": np.zeros(3, np.float32)}, r"not initializers of the tail: \['no_such_weight'\]"),
    ],
)
def test_with_initializers_rejects_what_does_not_fit(digits_model, values, message):
    with pytest.raises(InternalError, match=message):
        with_initializers(digits_model.onnx_model, values)


def test_with_initializers_rejects_another_shape(digits_model):
    init = digits_model.onnx_model.graph.initializer[0]
    with pytest.raises(InternalError, match=rf"initializer '{init.name}': new value float32 \(1,\) does not replace"):
        with_initializers(digits_model.onnx_model, {init.name: np.zeros(1, np.float32)})
