"""Splice a trained compression unit into a head and a tail (ONNX in, ONNX out).

``head.onnx`` = head → encoder → quantizer: its one output, ``codes``, is the uint8 tensor of
b-bit codes (C', H', W'); the quantization parameters are constants recorded in the manifest.
``tail.onnx`` = dequantizer → decoder → tail: its one input is ``codes``. The encoder and decoder
are exported from torch at the model's own opset and joined with ``onnx.compose.merge_models``
after ``onnx.compose.add_prefix`` has namespaced their internals (so that no tensor name of the
unit can collide with the user's graph).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnx.compose

from splitpack.compiler.codec import CodecSpec, codes_shape
from splitpack.compiler.cuts import Cut
from splitpack.compiler.split import split_at
from splitpack.errors import InternalError

__all__ = ["CODES_NAME", "export_codec", "splice_codec", "build_variant", "with_initializers"]

CODES_NAME = "codes"
_FEATURES = "features"
_RESTORED = "restored"


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _export(module, example, input_name: str, output_name: str, opset: int, ir_version: int, prefix: str):
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (example,), buffer, dynamo=False, opset_version=opset,
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = ir_version
    return onnx.compose.add_prefix(model, prefix, rename_inputs=False, rename_outputs=False)


def export_codec(encoder, decoder, cut: Cut, codec: CodecSpec, model: onnx.ModelProto):
    """Export a trained encoder and decoder to ONNX at ``model``'s opset and IR version.

    Returns:
        ``(encoder_onnx, decoder_onnx)``: ``features -> codes`` (uint8) and ``codes -> restored``.
    """
    import torch

    opset, ir_version = _opset(model), model.ir_version
    features = torch.zeros((1,) + tuple(cut.shape))
    codes = torch.zeros((1,) + codes_shape(cut.shape, codec), dtype=torch.uint8)
    encoder_onnx = _export(encoder, features, _FEATURES, CODES_NAME, opset, ir_version, "splitpack_encoder/")
    decoder_onnx = _export(decoder, codes, CODES_NAME, _RESTORED, opset, ir_version, "splitpack_decoder/")
    return encoder_onnx, decoder_onnx


def splice_codec(head: onnx.ModelProto, tail: onnx.ModelProto, cut: Cut, encoder_onnx, decoder_onnx):
    """Join the encoder after ``head`` and the decoder before ``tail``; inputs are not modified.

    Returns:
        ``(head, tail)``: the head's only output and the tail's only input are ``codes``.
    """
    head_out = head.graph.output[0].name
    tail_in = tail.graph.input[0].name
    if head_out != cut.name or tail_in != cut.name:
        raise InternalError(f"splice at {cut.label!r}: head output {head_out!r} / tail input {tail_in!r} are not the cut")
    spliced_head = onnx.compose.merge_models(head, encoder_onnx, io_map=[(cut.name, _FEATURES)],
                                             producer_name="splitpack")
    spliced_tail = onnx.compose.merge_models(decoder_onnx, tail, io_map=[(_RESTORED, cut.name)],
                                             producer_name="splitpack")
    for role, part in (("head", spliced_head), ("tail", spliced_tail)):
        try:
            onnx.checker.check_model(part, full_check=True)
        except Exception as exc:
            raise InternalError(f"spliced {role} at {cut.label!r} fails the ONNX checker: {exc}") from exc
    if [o.name for o in spliced_head.graph.output] != [CODES_NAME] or [i.name for i in spliced_tail.graph.input] != [CODES_NAME]:
        raise InternalError(f"splice at {cut.label!r}: the head's outputs are not the tail's inputs")
    return spliced_head, spliced_tail


def with_initializers(model: onnx.ModelProto, values: dict) -> onnx.ModelProto:
    """A copy of ``model`` whose initializers named in ``values`` hold the new arrays.

    Raises:
        InternalError: a name that is not an initializer, or a shape or dtype that differs.
    """
    from onnx import numpy_helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    found = set()
    for index, init in enumerate(result.graph.initializer):
        if init.name not in values:
            continue
        old = numpy_helper.to_array(init)
        new = np.asarray(values[init.name])
        if new.shape != old.shape or new.dtype != old.dtype:
            raise InternalError(f"initializer {init.name!r}: new value {new.dtype} {new.shape} does not "
                                f"replace {old.dtype} {old.shape}")
        result.graph.initializer[index].CopyFrom(numpy_helper.from_array(new, init.name))
        found.add(init.name)
    missing = sorted(set(values) - found)
    if missing:
        raise InternalError(f"{len(missing)} tail weight(s) are not initializers of the tail: {missing[:5]}")
    return result


def build_variant(model: onnx.ModelProto, cut: Cut, codec: CodecSpec, encoder, decoder, tail_weights=None):
    """Split ``model`` at ``cut`` and splice the trained unit in: the emitted head and tail.

    ``tail_weights`` (initializer name -> array, from tail fine-tuning) replace the tail's."""
    head, tail = split_at(model, cut)
    if tail_weights:
        tail = with_initializers(tail, tail_weights)
    encoder_onnx, decoder_onnx = export_codec(encoder, decoder, cut, codec, model)
    return splice_codec(head, tail, cut, encoder_onnx, decoder_onnx)

