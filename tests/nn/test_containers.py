"""nn.ModuleList, nn.ModuleDict and repr(module), compared with torch.nn."""

from __future__ import annotations

import numpy as np
import pytest

import pyengine as pe
from pyengine import nn

torch = pytest.importorskip("torch")
tnn = torch.nn
F32 = np.float32


# ---------------------------------------------------------------- repr
def _mlp(lib, gelu):
    return lib.Sequential(lib.Linear(64, 128), lib.ReLU(), lib.LayerNorm(128), lib.Linear(128, 10, bias=False),
                          gelu(lib), lib.Tanh())


def _convs(lib):
    return lib.Sequential(lib.Conv2d(3, 8, 3, padding=1), lib.ReLU(), lib.Conv2d(8, 16, (3, 5), stride=2),
                          lib.Conv2d(16, 16, 1, bias=False), lib.Conv2d(16, 4, 3, stride=(2, 1), padding=(0, 2),
                                                                        dilation=2))


def _gelu_tanh(lib):
    return lib.GELU(approximate="tanh")


def _nested(lib):
    def make():
        return lib.Sequential(lib.Linear(8, 8), lib.ReLU())
    blocks = lib.ModuleList([make(), make(), make(), lib.Linear(8, 2)])
    heads = lib.ModuleDict({"cls": lib.Linear(8, 3), "box": lib.Sequential(lib.Linear(8, 4), lib.Tanh())})
    return lib.Sequential(lib.Sequential(lib.Conv2d(1, 2, 3), lib.ReLU()), blocks, heads, lib.ModuleList(),
                          lib.Sequential(), lib.CrossEntropyLoss())


class _Model:
    """A custom model with attribute children, built on either library."""

    @staticmethod
    def build(lib):
        base = lib.Module

        class Net(base):
            def __init__(self):
                super().__init__()
                self.embed = lib.Linear(16, 32)
                self.layers = lib.ModuleList([lib.LayerNorm(32), lib.LayerNorm(32), lib.Linear(32, 32)])
                self.act = lib.ReLU()
                self.head = lib.Linear(32, 4)

            def forward(self, x):
                x = self.embed(x)
                for layer in self.layers:
                    x = self.act(layer(x))
                return self.head(x)

        return Net()


ARCHITECTURES = {
    "mlp": lambda lib: _mlp(lib, _gelu_tanh),
    "convs": _convs,
    "nested": _nested,
    "custom": _Model.build,
    "leaf_linear": lambda lib: lib.Linear(64, 128),
    "leaf_layernorm": lambda lib: lib.LayerNorm(64),
    "empty_list": lambda lib: lib.ModuleList(),
    "empty_dict": lambda lib: lib.ModuleDict(),
    "repeated": lambda lib: lib.ModuleList([lib.ReLU(), lib.ReLU(), lib.Tanh(), lib.Tanh(), lib.Tanh(),
                                            lib.ReLU()]),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_repr_matches_torch(name):
    build = ARCHITECTURES[name]
    ours, theirs = build(nn), build(tnn)
    assert repr(ours) == repr(theirs)
    assert str(ours) == str(theirs)


def test_repr_examples_from_the_torch_docs():
    assert repr(nn.Linear(64, 128)) == "Linear(in_features=64, out_features=128, bias=True)"
    assert repr(nn.Conv2d(3, 8, 3, padding=1)) == "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
    assert repr(nn.ReLU()) == "ReLU()"
    assert repr(nn.Sequential(nn.ReLU())) == "Sequential(\n  (0): ReLU()\n)"


def test_repr_uses_multiline_extra_repr_like_torch():
    class Ours(nn.Module):
        def extra_repr(self):
            return "a=1\nb=2"

    class Theirs(tnn.Module):
        def extra_repr(self):
            return "a=1\nb=2"

    outer, touter = nn.Sequential(Ours()), tnn.Sequential(Theirs())
    assert repr(outer).replace("Ours", "X") == repr(touter).replace("Theirs", "X")


# ---------------------------------------------------------------- registration
def test_module_list_registers_parameters_with_torch_names():
    model, ref = _Model.build(nn), _Model.build(tnn)
    assert list(model.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert "layers.2.weight" in model.state_dict()
    assert len(model.parameters()) == len(list(ref.parameters())) == 10


def test_module_list_model_computes_like_torch():
    model, ref = _Model.build(nn), _Model.build(tnn)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(F32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(pe.Tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_module_dict_registers_parameters_with_torch_names():
    ours, theirs = _nested(nn), _nested(tnn)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert "2.box.0.weight" in ours.state_dict()
    ours.eval()
    assert not ours[2]["box"][1].training


# ---------------------------------------------------------------- ModuleList behaviour
def _names(modules):
    return [m.out_features for m in modules]


def _linears(*sizes, lib=nn):
    return [lib.Linear(1, s) for s in sizes]


def test_module_list_indexing_and_slicing_follow_torch():
    ours, theirs = nn.ModuleList(_linears(1, 2, 3, 4, 5)), tnn.ModuleList(_linears(1, 2, 3, 4, 5, lib=tnn))
    for index in (0, 2, -1, -5):
        assert ours[index].out_features == theirs[index].out_features
    for part in (slice(1, 3), slice(None, None, 2), slice(-2, None), slice(3, 1)):
        assert isinstance(ours[part], nn.ModuleList)
        assert _names(ours[part]) == _names(theirs[part])
    assert len(ours) == 5 and _names(ours) == [1, 2, 3, 4, 5]
    with pytest.raises(IndexError):
        ours[5]
    with pytest.raises(IndexError):
        ours[-6]
    with pytest.raises(TypeError):
        ours["a"]


def test_module_list_mutation_follows_torch():
    ours, theirs = nn.ModuleList(_linears(1, 2)), tnn.ModuleList(_linears(1, 2, lib=tnn))
    steps = [
        lambda m, lib: m.append(lib.Linear(1, 3)),
        lambda m, lib: m.extend([lib.Linear(1, 4), lib.Linear(1, 5)]),
        lambda m, lib: m.insert(1, lib.Linear(1, 6)),
        lambda m, lib: m.insert(0, lib.Linear(1, 7)),
        lambda m, lib: m.__setitem__(-1, lib.Linear(1, 8)),
        lambda m, lib: m.__delitem__(2),
        lambda m, lib: m.__delitem__(slice(0, 2)),
        lambda m, lib: m.pop(1),
        lambda m, lib: m.__iadd__([lib.Linear(1, 9)]),
    ]
    for step in steps:
        step(ours, nn)
        step(theirs, tnn)
        assert _names(ours) == _names(theirs)
        assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours.append(nn.ReLU()) is ours
    combined = ours + nn.ModuleList([nn.Tanh()])
    assert isinstance(combined, nn.ModuleList) and len(combined) == len(ours) + 1


def test_module_list_rejects_non_modules():
    with pytest.raises(TypeError):
        nn.ModuleList([nn.ReLU(), "relu"])
    with pytest.raises(TypeError):
        nn.ModuleList().append(3)
    with pytest.raises(TypeError):
        nn.ModuleList().extend(nn.ReLU())  # a Module, not an iterable of Modules
    with pytest.raises(NotImplementedError):
        nn.ModuleList([nn.ReLU()])(pe.Tensor(np.ones(2, F32)))  # like torch, no forward


# ---------------------------------------------------------------- ModuleDict behaviour
def test_module_dict_follows_the_dict_api():
    heads = nn.ModuleDict({"a": nn.Linear(2, 1), "b": nn.ReLU()})
    heads["c"] = nn.Linear(2, 3)
    heads.update([("d", nn.Tanh()), ("a", nn.Linear(2, 5))])  # replacing keeps the position
    assert list(heads) == list(heads.keys()) == ["a", "b", "c", "d"]
    assert heads["a"].out_features == 5 and len(heads) == 4 and "c" in heads and "z" not in heads
    assert [type(m).__name__ for m in heads.values()] == ["Linear", "ReLU", "Linear", "Tanh"]
    assert [k for k, _ in heads.items()] == ["a", "b", "c", "d"]
    assert list(heads.state_dict()) == ["a.weight", "a.bias", "c.weight", "c.bias"]
    assert isinstance(heads.pop("b"), nn.ReLU) and "b" not in heads
    del heads["d"]
    assert list(heads) == ["a", "c"]
    heads.update(nn.ModuleDict({"e": nn.ReLU()}))
    assert list(heads) == ["a", "c", "e"]
    heads.clear()
    assert len(heads) == 0
    with pytest.raises(KeyError):
        heads["missing"]


def test_module_dict_matches_torch_order_and_names():
    spec = lambda lib: [("conv", lib.Conv2d(1, 2, 3)), ("fc", lib.Linear(3, 4))]  # noqa: E731
    ours, theirs = nn.ModuleDict(spec(nn)), tnn.ModuleDict(spec(tnn))
    assert list(ours) == list(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(ours) == repr(theirs)


def test_module_dict_rejects_bad_entries():
    with pytest.raises(TypeError):
        nn.ModuleDict({"a": 1})
    with pytest.raises(TypeError):
        nn.ModuleDict()[3] = nn.ReLU()
    with pytest.raises(ValueError):
        nn.ModuleDict({"a.b": nn.ReLU()})
    with pytest.raises(ValueError):
        nn.ModuleDict([("a", nn.ReLU(), "extra")])
    with pytest.raises(TypeError):
        nn.ModuleDict(5)
