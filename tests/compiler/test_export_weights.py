"""Loading --weights: checkpoints as people publish them, and the bad-checkpoint table."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from splitpack.compiler.export import load_torch_module
from splitpack.errors import InvalidModelError


class SmallBnNet(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class Holder(nn.Module):
    """A model whose own keys all start with ``module.``: that prefix must never be stripped."""

    def __init__(self):
        super().__init__()
        self.module = SmallBnNet()

    def forward(self, x):
        return self.module(x)


def small_bn_net():
    return SmallBnNet()


def holder_net():
    return Holder()


SMALL_SPEC = f"{__name__}:small_bn_net"
HOLDER_SPEC = f"{__name__}:holder_net"


def _trained(model: nn.Module) -> nn.Module:
    """Give every parameter and buffer values a freshly built model does not have."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return model


def _data_parallel(model: nn.Module) -> OrderedDict:
    """The state_dict as (Distributed)DataParallel saves it: every key and module name behind ``module.``."""
    return nn.DataParallel(model).state_dict()


def _saved_before_num_batches_tracked(state: OrderedDict) -> OrderedDict:
    """The state_dict as torch saved it before BatchNorm had num_batches_tracked (BatchNorm version 1)."""
    old = OrderedDict((key, value) for key, value in state.items() if not key.endswith("num_batches_tracked"))
    old._metadata = OrderedDict(
        (name, dict(info, version=1) if name.endswith("bn") else info) for name, info in state._metadata.items()
    )
    return old


def _without_num_batches_tracked(state: OrderedDict) -> OrderedDict:
    """A current state_dict (BatchNorm version 2) with the buffer deleted: strict=True rejects it."""
    trimmed = OrderedDict((key, value) for key, value in state.items() if not key.endswith("num_batches_tracked"))
    trimmed._metadata = state._metadata
    return trimmed


def _without(state: OrderedDict, key: str) -> OrderedDict:
    trimmed = OrderedDict((name, value) for name, value in state.items() if name != key)
    trimmed._metadata = state._metadata
    return trimmed


def _with_extra(state: OrderedDict, key: str) -> OrderedDict:
    extended = OrderedDict(state)
    extended[key] = torch.ones(4)
    extended._metadata = state._metadata
    return extended


def _assert_weights_equal(loaded: nn.Module, saved: nn.Module, *, num_batches_tracked: int | None = None):
    loaded_state, saved_state = loaded.state_dict(), saved.state_dict()
    assert list(loaded_state) == list(saved_state)
    for key, expected in saved_state.items():
        if key.endswith("num_batches_tracked") and num_batches_tracked is not None:
            expected = torch.tensor(num_batches_tracked)
        actual = loaded_state[key]
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, key
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    "make_checkpoint, num_batches_tracked",
    [
        pytest.param(lambda model: model.state_dict(), None, id="plain"),
        pytest.param(lambda model: _saved_before_num_batches_tracked(model.state_dict()), 0,
                     id="saved-before-num_batches_tracked"),
        pytest.param(lambda model: {k: v for k, v in model.state_dict().items() if "num_batches" not in k}, 0,
                     id="plain-dict-without-num_batches_tracked"),
        pytest.param(lambda model: {"state_dict": model.state_dict()}, None, id="state_dict-wrapper"),
        pytest.param(lambda model: {"epoch": 3, "model": model.state_dict(), "optimizer": {"state": {}}}, None,
                     id="model-wrapper-with-training-state"),
        pytest.param(lambda model: {"model_state_dict": model.state_dict()}, None, id="model_state_dict-wrapper"),
        pytest.param(lambda model: {"net": model.state_dict()}, None, id="net-wrapper"),
        pytest.param(lambda model: _data_parallel(model), None, id="module-prefix"),
        pytest.param(lambda model: {"state_dict": _data_parallel(model)}, None, id="wrapper-then-prefix"),
        pytest.param(lambda model: {"module.state_dict": model.state_dict()}, None, id="prefix-then-wrapper"),
        pytest.param(lambda model: {"state_dict_ema": _saved_before_num_batches_tracked(_data_parallel(model))}, 0,
                     id="ema-wrapper-prefix-and-old-batchnorm"),
        pytest.param(lambda model: {"model": "small_bn_net", "state_dict": _data_parallel(model)}, None,
                     id="wrapper-next-to-a-non-dict-model-entry"),
    ],
)
def test_published_checkpoints_load_their_weights(tmp_path, make_checkpoint, num_batches_tracked):
    saved = _trained(SmallBnNet())
    path = tmp_path / "weights.pt"
    torch.save(make_checkpoint(saved), path)
    loaded = load_torch_module(SMALL_SPEC, path)
    assert not loaded.training
    _assert_weights_equal(loaded, saved, num_batches_tracked=num_batches_tracked)


@pytest.mark.parametrize(
    "make_checkpoint",
    [
        pytest.param(lambda model: model.state_dict(), id="own-module-prefix-kept"),
        pytest.param(_data_parallel, id="data-parallel-prefix-on-top-stripped-once"),
    ],
)
def test_a_prefix_the_model_has_is_never_stripped(tmp_path, make_checkpoint):
    saved = _trained(Holder())
    path = tmp_path / "holder.pt"
    torch.save(make_checkpoint(saved), path)
    _assert_weights_equal(load_torch_module(HOLDER_SPEC, path), saved)


def _write(tmp_path, name, checkpoint):
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


def _write_text(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _with_scale_and_without_bias(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose fc has a ``scale`` buffer and no bias: one unexpected and one missing key."""
    other = SmallBnNet()
    other.load_state_dict(model.state_dict())
    other.fc.register_buffer("scale", torch.ones(4))
    other.fc.bias = None
    return other


@pytest.mark.parametrize(
    "make_file, message",
    [
        pytest.param(lambda d, m: _write(d, "missing.pt", _without(m.state_dict(), "fc.bias")),
                     r"weights '.*missing\.pt' do not fit the model: missing keys: fc\.bias\. Check that",
                     id="missing-key"),
        pytest.param(lambda d, m: _write(d, "extra.pt", _with_extra(m.state_dict(), "fc.scale")),
                     r"'.*extra\.pt' do not fit the model: unexpected keys: fc\.scale\. Check that",
                     id="unexpected-key"),
        pytest.param(lambda d, m: _write(d, "classes.pt", SmallBnNet(classes=5).state_dict()),
                     r"'.*classes\.pt' do not fit the model: shape mismatches: fc\.bias \(file \(5,\), model \(3,\)\), "
                     r"fc\.weight \(file \(5, 4\), model \(3, 4\)\)\. .*number of classes",
                     id="shape-mismatch"),
        pytest.param(lambda d, m: _write(d, "both.pt", {"state_dict": _data_parallel(_with_scale_and_without_bias(m))}),
                     r"missing keys: fc\.bias; unexpected keys: fc\.scale "
                     r"\(keys read inside 'state_dict', without the 'module\.' prefix\)",
                     id="mismatch-listed-after-unwrapping"),
        pytest.param(lambda d, m: _write(d, "nbt.pt", _without_num_batches_tracked(m.state_dict())),
                     r"missing keys: bn\.num_batches_tracked\.", id="current-batchnorm-without-its-buffer"),
        pytest.param(lambda d, m: _write(d, "nested.pt", {"weights": m.state_dict()}),
                     r"missing keys: bn\.bias, .*; unexpected keys: weights\. .*found only under state_dict, model, ",
                     id="unknown-wrapper-key"),
        pytest.param(lambda d, m: _write(d, "list.pt", [m.conv.weight.detach()]),
                     r"'.*list\.pt' holds a list, not a state_dict .*torch\.save\(model\.state_dict\(\), path\)",
                     id="non-dict-file"),
        pytest.param(lambda d, m: _write(d, "tensor.pt", torch.zeros(3)), r"holds a Tensor, not a state_dict",
                     id="tensor-file"),
        pytest.param(lambda d, m: _write(d, "whole.pt", m),
                     r"'.*whole\.pt' holds a pickled tests\.compiler\.test_export_weights\.SmallBnNet, which "
                     r"torch\.load\(weights_only=True\) refuses .* torch\.save\(model\.state_dict\(\), path\)",
                     id="pickled-whole-model"),
        pytest.param(lambda d, m: _write_text(d, "notes.pt", "not a checkpoint"),
                     r"'.*notes\.pt' cannot be loaded with torch\.load\(weights_only=True\) \(.*\); it must hold a "
                     r"state_dict", id="not-a-torch-file"),
        pytest.param(lambda d, m: _write(d, "wrapped_list.pt", {"state_dict": [1, 2]}),
                     r"'.*wrapped_list\.pt' holds a dict whose 'state_dict' entry is a list, not a state_dict",
                     id="wrapper-holding-a-list"),
        pytest.param(lambda d, m: _write(d, "wrapped_name.pt", {"model": "resnet18"}),
                     r"whose 'model' entry is a str, not a state_dict", id="wrapper-holding-a-string"),
        pytest.param(lambda d, m: _write(d, "int_keys.pt", {0: m.conv.weight.detach()}),
                     r"non-string keys such as 0, not a state_dict", id="non-string-keys"),
        pytest.param(lambda d, m: _write(d, "number.pt", {**m.state_dict(), "conv.weight": 3}),
                     r"'.*number\.pt' do not load into the model: .*expected torch\.Tensor", id="non-tensor-value"),
        pytest.param(lambda d, m: d / "absent.pt", r"weights file '.*absent\.pt' does not exist", id="absent-file"),
    ],
)
def test_bad_checkpoints(tmp_path, make_file, message):
    path = make_file(tmp_path, _trained(SmallBnNet()))
    with pytest.raises(InvalidModelError, match=message):
        load_torch_module(SMALL_SPEC, path)

