"""pyengine.capture: a replayed static graph must match the eager loop."""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest

import pyengine as pe
from pyengine import functional as F
from pyengine import nn
from pyengine.graph.planner import ALIGNMENT
from pyengine.tensor import Tensor

F32 = np.float32
STEPS = 5


# ------------------------------------------------------------------ models


def _mlp(seed, d_in=8, hidden=32, classes=4):
    pe.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.GELU(approximate="tanh"),
                         nn.LayerNorm(hidden), nn.Linear(hidden, classes))


class _TokenModel(nn.Module):
    """Linear layers over (batch, tokens, features): F.linear reshapes 3-D input."""

    def __init__(self, seed, d=8, hidden=16, classes=5):
        super().__init__()
        pe.manual_seed(seed)
        self.up = nn.Linear(d, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.down = nn.Linear(hidden, classes)
        self.classes = classes

    def forward(self, x):
        h = F.gelu(F.linear(x, self.up.weight, self.up.bias), approximate="tanh")  # (B, T, hidden)
        h = h + self.norm(h).tanh()                              # residual: h used twice
        logits = self.down(h)                                    # (B, T, classes)
        return logits.reshape(-1, self.classes)


class _SmallCNN(nn.Module):
    """conv -> relu -> conv stride 2 -> relu -> reshape -> linear, on (batch, 2, 8, 7) images."""

    def __init__(self, seed, channels=2, classes=5):
        super().__init__()
        pe.manual_seed(seed)
        self.conv1 = nn.Conv2d(channels, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.head = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))  # (B, 8, 4, 4)
        return self.head(h.reshape(h.shape[0], -1))


def _mlp_data(seed, steps=STEPS, batch=16, d_in=8, classes=4):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((batch, d_in)).astype(F32) for _ in range(steps)]
    ys = [rng.integers(0, classes, batch).astype(np.int64) for _ in range(steps)]
    return xs, ys


def _token_data(seed, steps=STEPS, batch=3, tokens=4, d=8, classes=5):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((batch, tokens, d)).astype(F32) for _ in range(steps)]
    ys = [rng.integers(0, classes, batch * tokens).astype(np.int64) for _ in range(steps)]
    return xs, ys


def _sgd(model):
    return pe.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)


def _eager_losses(model, opt, xs, ys):
    losses = []
    for x, y in zip(xs, ys):
        opt.zero_grad()
        loss = F.cross_entropy(model(Tensor(x)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _capture_training(model, opt, x0, y0):
    return pe.capture(lambda x, y: F.cross_entropy(model(x), y), x0, y0, optimizer=opt)


def _image_data(seed, steps=STEPS, batch=6, classes=5):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((batch, 2, 8, 7)).astype(F32) for _ in range(steps)]
    ys = [rng.integers(0, classes, batch).astype(np.int64) for _ in range(steps)]
    return xs, ys


CASES = {
    "mlp": (_mlp, _mlp_data),
    "tokens_reshape": (_TokenModel, _token_data),
    "cnn": (_SmallCNN, _image_data),
}


# ------------------------------------------------------------------ replay == eager


@pytest.mark.parametrize("case", list(CASES))
def test_training_replay_matches_eager(case):
    make, data = CASES[case]
    xs, ys = data(seed=1)
    eager, graph_model = make(seed=0), make(seed=0)
    for a, b in zip(eager.parameters(), graph_model.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    eager_opt, graph_opt = _sgd(eager), _sgd(graph_model)
    initial = [p.numpy().copy() for p in graph_model.parameters()]

    expected = _eager_losses(eager, eager_opt, xs, ys)

    graph = _capture_training(graph_model, graph_opt, xs[0], ys[0])
    # capturing runs the forward only: the model is untouched
    for p, before in zip(graph_model.parameters(), initial):
        np.testing.assert_array_equal(p.numpy(), before)
    got = [graph.run(x, y).item() for x, y in zip(xs, ys)]

    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert len(set(round(v, 6) for v in got)) == len(got)  # different batches, different losses
    assert graph_opt.steps == STEPS
    for (name, a), (_, b), before in zip(eager.named_parameters(), graph_model.named_parameters(), initial):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7, err_msg=name)
        assert not np.allclose(b.numpy(), before), f"{name} did not train"
        # param.grad is the graph's gradient buffer, holding the last step's gradient
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=1e-6, atol=1e-7, err_msg=name)


def test_cnn_training_replay_is_bit_exact():
    """Each convolution runs with its ReLU fused (the bits of the two ops apart) and nothing is
    reordered: replay == eager, bit for bit."""
    xs, ys = _image_data(seed=21)
    eager, graph_model = _SmallCNN(seed=22), _SmallCNN(seed=22)
    initial = [p.numpy().copy() for p in graph_model.parameters()]
    expected = _eager_losses(eager, _sgd(eager), xs, ys)
    graph = _capture_training(graph_model, _sgd(graph_model), xs[0], ys[0])
    assert [step.op.name for step in graph.steps if "conv2d" in step.op.name] == [
        "conv2d+relu", "conv2d+relu", "conv2d", "conv2d"]  # 2 fused forward, 2 backward
    got = [graph.run(x, y).item() for x, y in zip(xs, ys)]
    assert got == expected and len(set(got)) == len(got)
    for (name, a), (_, b), before in zip(eager.named_parameters(), graph_model.named_parameters(),
                                         initial):
        assert not np.allclose(b.numpy(), before), f"{name} did not train"
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=name)
        np.testing.assert_array_equal(b.grad.numpy(), a.grad.numpy(), err_msg=name)


def test_replay_with_tensors_and_repeated_batches():
    xs, ys = _mlp_data(seed=2, steps=3)
    xs, ys = xs + xs, ys + ys  # revisit the same batches: the plan must not leak state between runs
    eager, graph_model = _mlp(3), _mlp(3)
    expected = _eager_losses(eager, _sgd(eager), xs, ys)
    graph = _capture_training(graph_model, _sgd(graph_model), xs[0], ys[0])
    got = [graph(Tensor(x), Tensor(y)).item() for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_plain_sgd_replay_matches_eager_exactly():
    xs, ys = _mlp_data(seed=4)
    eager, graph_model = _mlp(5), _mlp(5)
    e_opt = pe.optim.SGD(eager.parameters(), lr=0.05)
    g_opt = pe.optim.SGD(graph_model.parameters(), lr=0.05)
    expected = _eager_losses(eager, e_opt, xs, ys)
    graph = _capture_training(graph_model, g_opt, xs[0], ys[0])
    got = [graph.run(x, y).item() for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert got[-1] < got[0] + 1.0  # sanity: numbers are finite and of the right scale
    for a, b in zip(eager.parameters(), graph_model.parameters()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-6, atol=1e-7)


def test_load_state_dict_keeps_captured_graph_valid():
    xs, ys = _mlp_data(seed=6, steps=3)
    graph_model = _mlp(7)
    graph = _capture_training(graph_model, _sgd(graph_model), xs[0], ys[0])
    eager = _mlp(8)  # different weights, loaded into the captured model in place
    graph_model.load_state_dict({k: v.copy() for k, v in eager.state_dict().items()})
    expected = _eager_losses(eager, _sgd(eager), xs, ys)
    got = [graph.run(x, y).item() for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", list(CASES))
def test_forward_only_capture_matches_eager(case):
    make, data = CASES[case]
    xs, _ = data(seed=9, steps=3)
    model = make(seed=10)
    graph = pe.capture(lambda x: model(x), xs[0])
    assert graph.optimizer is None and graph.params == []
    assert all(step.kind == "forward" for step in graph.steps)
    for x in xs:
        with pe.no_grad():
            expected = model(Tensor(x)).numpy().copy()
        out = graph.run(x)
        assert isinstance(out, Tensor) and out.shape == expected.shape and out.dtype == np.float32
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-7)
    for p in model.parameters():
        assert p.grad is None  # forward only: no gradients written


def test_forward_only_capture_of_elementwise_expression():
    w = Tensor(np.linspace(-1, 1, 6, dtype=F32).reshape(2, 3))
    fn = lambda a, b: ((a * w + b) / 2.0 - 1.0).exp().sum(axis=1) ** 2  # noqa: E731
    rng = np.random.default_rng(0)
    a0, b0 = rng.standard_normal((2, 3)).astype(F32), rng.standard_normal((2, 3)).astype(F32)
    graph = pe.capture(fn, a0, b0)
    for _ in range(3):
        a, b = rng.standard_normal((2, 3)).astype(F32), rng.standard_normal((2, 3)).astype(F32)
        expected = (np.exp((a * w.numpy() + b) / 2.0 - 1.0).sum(axis=1)) ** 2
        np.testing.assert_allclose(graph.run(a, b).numpy(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ no allocation on replay


def _numpy_growth(fn) -> int:
    """Bytes of numpy data allocated by fn() and still alive afterwards."""
    domain = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(domain)
        keep = fn()  # noqa: F841 - keep the result alive across the snapshot
        after = tracemalloc.take_snapshot().filter_traces(domain)
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in after.compare_to(before, "lineno") if stat.size_diff > 0)


def _peak_growth(fn) -> int:
    """Peak traced bytes during fn() above the level at its start (transient allocations too)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_measurement_detects_numpy_allocations():
    # the probes themselves must be able to fail
    assert _numpy_growth(lambda: np.empty(10_000, F32)) >= 40_000
    model = _mlp(0)
    x = Tensor(np.ones((16, 8), F32))
    assert _numpy_growth(lambda: model(x)) > 0  # eager mode allocates activations
    assert _peak_growth(lambda: np.zeros(100_000, F32).sum()) >= 400_000


@pytest.mark.parametrize("case", list(CASES))
def test_replay_allocates_no_numpy_memory(case):
    make, data = CASES[case]
    xs, ys = data(seed=11, steps=3)
    model = make(seed=12)
    graph = _capture_training(model, _sgd(model), xs[0], ys[0])
    graph.run(xs[0], ys[0])  # first replay: the optimizer creates its momentum buffers
    x, y = xs[1], ys[1]
    assert _numpy_growth(lambda: graph.run(x, y)) == 0
    assert _numpy_growth(lambda: graph.run(xs[2], ys[2])) == 0


def test_replay_has_no_transient_allocations():
    # a larger MLP: any temporary activation-sized array would be >= 32 KiB
    xs, ys = _mlp_data(seed=13, steps=2, batch=64, d_in=64, classes=10)
    model = _mlp(14, d_in=64, hidden=128, classes=10)
    graph = _capture_training(model, _sgd(model), xs[0], ys[0])
    graph.run(xs[0], ys[0])
    assert _peak_growth(lambda: graph.run(xs[1], ys[1])) < 8192


def test_replay_of_non_adjacent_sum_has_no_transient_allocations():
    w = nn.Parameter(np.ones((1,), F32))
    x = np.random.default_rng(0).standard_normal((2, 4096, 2)).astype(F32)
    graph = pe.capture(lambda x: (x * w).sum(axis=(0, 2)).sum(), x, optimizer=pe.optim.SGD([w], lr=0.0))
    graph.run(x)
    assert _peak_growth(lambda: graph.run(x)) < 8192


def test_capture_keeps_no_activation_of_its_eager_pass():
    # A captured graph keeps its arena and the parameters' gradients. The capture pass's
    # own activations (an eager forward and its autograd graph) must be released, or they
    # would stay beside the arena for the graph's lifetime.
    xs, ys = _mlp_data(seed=17, steps=1, batch=256, d_in=64, classes=10)
    model = _mlp(18, d_in=64, hidden=128, classes=10)
    optimizer = _sgd(model)
    growth = _numpy_growth(lambda: _capture_training(model, optimizer, xs[0], ys[0]))
    graph = _capture_training(model, optimizer, xs[0], ys[0])
    gradients = sum(p.data.nbytes for p in model.parameters())
    eager_activations = 256 * 128 * 4 * 4  # four hidden-width activations at the least
    assert graph.arena_bytes > eager_activations
    assert growth <= graph.arena_bytes + ALIGNMENT + gradients + eager_activations // 4


# ------------------------------------------------------------------ memory plan


def _bigger_model_graph():
    pe.manual_seed(15)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.GELU("tanh"), nn.Linear(64, 64),
                          nn.ReLU(), nn.LayerNorm(64), nn.Linear(64, 64), nn.GELU("tanh"), nn.Linear(64, 10))
    xs, ys = _mlp_data(seed=16, steps=1, batch=32, d_in=16, classes=10)
    return _capture_training(model, _sgd(model), xs[0], ys[0]), model


def test_arena_is_aligned_and_reused():
    graph, _ = _bigger_model_graph()
    roots = graph._planned_roots
    assert len(roots) > 10
    for value in roots:
        assert value.offset % ALIGNMENT == 0
        assert value.array.ctypes.data % ALIGNMENT == 0, value.name
        assert value.array.flags.c_contiguous and value.array.shape == value.spec.shape
        assert np.shares_memory(value.array, graph.arena)
    assert graph.planned_bytes == sum(v.spec.nbytes for v in roots)
    assert graph.arena_bytes < graph.planned_bytes  # buffers with disjoint lifetimes share memory
    assert graph.arena_bytes <= 0.75 * graph.planned_bytes
    assert graph.arena.nbytes <= graph.arena_bytes + ALIGNMENT
    # the arena is at least as large as the live bytes at the busiest step
    span = graph._lifetimes()
    busiest = max(sum(v.spec.nbytes for v in roots if span[id(v)][0] <= t <= span[id(v)][1])
                  for t in range(-1, len(graph.steps) + 1))
    assert graph.arena_bytes >= busiest


def test_arena_buffers_with_overlapping_lifetimes_are_disjoint():
    graph, _ = _bigger_model_graph()
    roots = graph._planned_roots
    span = graph._lifetimes()
    for i, a in enumerate(roots):
        for b in roots[i + 1:]:
            (fa, la), (fb, lb) = span[id(a)], span[id(b)]
            if fa <= lb and fb <= la:
                assert not np.shares_memory(a.array, b.array), (a.name, b.name)
                assert a.offset + a.spec.nbytes <= b.offset or b.offset + b.spec.nbytes <= a.offset


def test_parameters_and_their_grads_live_outside_the_arena():
    graph, model = _bigger_model_graph()
    params = model.parameters()
    assert [id(t) for t, _ in graph.params] and {id(t) for t, _ in graph.params} == {id(p) for p in params}
    xs, ys = _mlp_data(seed=17, steps=1, batch=32, d_in=16, classes=10)
    graph.run(xs[0], ys[0])
    for p in params:
        assert not np.shares_memory(p.data, graph.arena)
        assert not np.shares_memory(p._grad, graph.arena)


def test_plan_text_mentions_every_step():
    graph, _ = _bigger_model_graph()
    text = graph.plan_text()
    lines = text.splitlines()
    assert f"{len(graph.steps)} steps" in lines[0]
    assert f"arena {graph.arena_bytes} bytes" in lines[0]
    labels = set()
    for index, step in enumerate(graph.steps):
        line = lines[1 + index]
        assert re.match(rf"\s*{index} {step.kind}\s", line), line
        assert step.op.label() in line
        labels.add(step.op.label())
    assert {"matmul[ᵀb]", "relu", "gelu", "layer_norm", "cross_entropy"} <= labels
    kinds = [s.kind for s in graph.steps]
    assert kinds.count("forward") > 0 and kinds.count("backward") > 0
    assert kinds == sorted(kinds, key=lambda k: k != "forward")  # forward first, then backward
    for value in graph._planned_roots:
        assert re.search(rf"^\s*{value.offset}\s+{value.spec.nbytes} {re.escape(value.name)}$", text, re.M)


def test_to_dot_is_a_digraph_with_every_step():
    graph, _ = _bigger_model_graph()
    dot = graph.to_dot()
    assert dot.startswith("digraph")
    assert dot.rstrip().endswith("}") and dot.count("{") == dot.count("}")
    edges = re.findall(r"^\s*(\w+) -> (\w+);$", dot, re.M)
    assert len(edges) >= 2 * len(graph.steps)
    declared = set(re.findall(r"^\s*(\w+) \[", dot, re.M))
    for src, dst in edges:
        assert src in declared and dst in declared
    for index, step in enumerate(graph.steps):
        assert f'label="{step.op.label()} ({step.kind})"' in dot
        assert f"s{index}" in declared


# ------------------------------------------------------------------ errors


def test_run_checks_inputs():
    xs, ys = _mlp_data(seed=18, steps=1)
    model = _mlp(19)
    graph = _capture_training(model, _sgd(model), xs[0], ys[0])
    with pytest.raises(ValueError):
        graph.run(xs[0][:8], ys[0])  # wrong batch
    with pytest.raises(ValueError):
        graph.run(xs[0].reshape(8, 16), ys[0])  # same size, wrong shape
    with pytest.raises(ValueError):
        graph.run(xs[0].astype(np.float64), ys[0])  # wrong dtype
    with pytest.raises(ValueError):
        graph.run(xs[0], ys[0].astype(np.int32))
    with pytest.raises(ValueError):
        graph.run(xs[0])  # missing input
    with pytest.raises(TypeError):
        graph.run(xs[0].tolist(), ys[0])
    # a failed call changed nothing: the next good one matches a fresh eager step
    eager = _mlp(19)
    expected = _eager_losses(eager, _sgd(eager), xs, ys)
    np.testing.assert_allclose(graph.run(xs[0], ys[0]).item(), expected[0], rtol=1e-6)


def test_capture_with_optimizer_needs_scalar_loss():
    model = _mlp(20)
    x = np.ones((4, 8), F32)
    with pytest.raises(ValueError):
        pe.capture(lambda x: model(x), x, optimizer=_sgd(model))  # (4, 4) output
    with pytest.raises(ValueError):  # scalar, but nothing requires grad
        pe.capture(lambda x: (x * 2.0).sum(), x, optimizer=_sgd(model))
    with pytest.raises(TypeError):
        pe.capture(lambda x: 3.0, x)


# ------------------------------------------------------------------ regressions


def test_training_replay_with_reshaped_loss_matches_eager():
    def make():
        w = nn.Parameter(np.linspace(-1, 1, 12, dtype=F32).reshape(3, 4))
        return w, pe.optim.SGD([w], lr=0.1)

    def loss_fn(w):
        return lambda x: (F.linear(x, w) ** 2).mean(axis=(0, 1), keepdims=True).reshape(())

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((5, 4)).astype(F32) for _ in range(3)]
    w_eager, opt_eager = make()
    expected = []
    for x in xs:
        opt_eager.zero_grad()
        loss = loss_fn(w_eager)(Tensor(x))
        loss.backward()
        opt_eager.step()
        expected.append(loss.item())
    w_graph, opt_graph = make()
    graph = pe.capture(loss_fn(w_graph), xs[0], optimizer=opt_graph)
    got = [graph.run(x).item() for x in xs]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(w_graph.numpy(), w_eager.numpy(), rtol=1e-6, atol=1e-7)


def _cross_entropy_step(graph):
    return next(s for s in graph.steps if s.kind == "backward" and s.op.name == "cross_entropy")


def test_cross_entropy_gradient_is_written_over_its_logits():
    """The loss's backward is the logits' last reader and their gradient's first writer, and its
    kernel may overwrite in place: the gradient takes the logits' buffer, with no zeroing before
    (GPT-2 124M: 196 MiB less), and the replay still matches eager
    (test_training_replay_matches_eager runs this model)."""
    make, data = CASES["tokens_reshape"]
    xs, ys = data(seed=1)
    model = make(seed=0)
    graph = _capture_training(model, _sgd(model), xs[0], ys[0])
    step = _cross_entropy_step(graph)
    logits, grad = step.ins[0], step.grad_ins[0]
    assert grad.root is logits.root and grad.array.ctypes.data == logits.array.ctypes.data
    assert step.zero_first == [] and step.op._backward_options["accumulate"] is False
    planned = {id(v) for v in graph._planned_roots}
    assert id(logits.root) in planned and not any(v.name == "grad(" + logits.root.name + ")" and id(v) in planned
                                                  for v in graph.values)


def test_logits_read_after_the_loss_backward_keep_their_own_gradient_buffer():
    """A backward step after the loss's reads the logits too (a penalty on them computed before
    the loss): the loss's gradient overwrites a buffer of its own, which the penalty's backward
    then adds into, and the replay matches eager."""
    def make():
        pe.manual_seed(3)
        return nn.Linear(6, 5)

    def loss_fn(layer):
        def loss(x, y):
            logits = layer(x)
            penalty = (logits * logits).mean() * 0.1  # recorded before the loss: its backward runs after
            return penalty + F.cross_entropy(logits, y)
        return loss

    rng = np.random.default_rng(2)
    xs = [rng.standard_normal((7, 6)).astype(F32) for _ in range(3)]
    ys = [rng.integers(0, 5, 7).astype(np.int64) for _ in range(3)]
    eager = make()
    opt_eager = pe.optim.SGD(eager.parameters(), lr=0.1)
    expected = []
    for x, y in zip(xs, ys):
        opt_eager.zero_grad()
        loss = loss_fn(eager)(Tensor(x), y)
        loss.backward()
        opt_eager.step()
        expected.append(loss.item())
    layer = make()
    graph = pe.capture(loss_fn(layer), xs[0], ys[0], optimizer=pe.optim.SGD(layer.parameters(), lr=0.1))
    step = _cross_entropy_step(graph)
    later = [s for s in graph.steps[graph.steps.index(step) + 1:] if s.kind == "backward" and s.op.name == "mul"]
    assert later and any(v.root is step.ins[0].root for v in later[0].ins)  # the case this test is for
    assert step.grad_ins[0].root is not step.ins[0].root
    assert step.op._backward_options["accumulate"] is False  # still written first: overwritten, not zeroed
    got = [graph.run(x, y).item() for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(layer.weight.numpy(), eager.weight.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer.weight.grad.numpy(), eager.weight.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_same_shape_add_and_sub_backward_read_neither_operand():
    """Their gradients are dout and +-dout: the operands' buffers are free after the forward
    (a residual branch's output is not kept for the backward), and the replay matches eager;
    a broadcasting add still sums over the broadcast dims and reads its operands' shapes."""
    def make():
        pe.manual_seed(5)
        return nn.Linear(6, 6), nn.Parameter(np.linspace(-1, 1, 6, dtype=F32))

    def loss_fn(layer, shift):
        def loss(x, y):
            branch = layer(x)
            h = (x + branch) - branch.tanh() + shift  # same-shape add and sub, then a broadcast add
            return F.cross_entropy(h, y)
        return loss

    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((5, 6)).astype(F32) for _ in range(3)]
    ys = [rng.integers(0, 6, 5).astype(np.int64) for _ in range(3)]
    eager_layer, eager_shift = make()
    opt = pe.optim.SGD([*eager_layer.parameters(), eager_shift], lr=0.1)
    expected = []
    for x, y in zip(xs, ys):
        opt.zero_grad()
        loss = loss_fn(eager_layer, eager_shift)(Tensor(x), y)
        loss.backward()
        opt.step()
        expected.append(loss.item())
    layer, shift = make()
    graph = pe.capture(loss_fn(layer, shift), xs[0], ys[0],
                       optimizer=pe.optim.SGD([*layer.parameters(), shift], lr=0.1))
    passes = [s for s in graph.steps if s.kind == "backward" and s.op.name in ("add", "sub")]
    same = [s for s in passes if s.ins[0].spec.shape == s.ins[1].spec.shape]
    assert len(same) == 2 and len(passes) == 3
    assert all(s.reads() == [s.grad_out] for s in same)
    assert [v.spec.shape for v in (set(passes) - set(same)).pop().reads()[:2]] == [(5, 6), (6,)]
    got = [graph.run(x, y).item() for x, y in zip(xs, ys)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    for got_param, want in ((shift, eager_shift), (layer.weight, eager_layer.weight)):
        np.testing.assert_allclose(got_param.numpy(), want.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got_param.grad.numpy(), want.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_replay_does_not_apply_stale_grads_of_unused_parameters():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4)).astype(F32)
    y = rng.integers(0, 3, 5).astype(np.int64)

    def make():
        pe.manual_seed(0)
        used, unused = nn.Linear(4, 3), nn.Linear(4, 3)
        opt = pe.optim.SGD(used.parameters() + unused.parameters(), lr=0.1)
        opt.zero_grad()  # one eager step that touches both layers
        (F.cross_entropy(used(Tensor(x)), y) + unused(Tensor(x)).sum()).backward()
        opt.step()
        return used, unused, opt

    used_e, unused_e, opt_e = make()
    for _ in range(3):
        opt_e.zero_grad()
        F.cross_entropy(used_e(Tensor(x)), y).backward()
        opt_e.step()
    used_g, unused_g, opt_g = make()
    graph = pe.capture(lambda x, y: F.cross_entropy(used_g(x), y), x, y, optimizer=opt_g)
    for _ in range(3):
        graph.run(x, y)
    np.testing.assert_allclose(used_g.weight.numpy(), used_e.weight.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(unused_g.weight.numpy(), unused_e.weight.numpy(), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ fusion


def _fusion_model(seed):
    pe.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU("tanh"), nn.Linear(32, 4))


def test_matmul_and_its_only_activation_run_as_one_fused_step():
    model = _fusion_model(40)
    x = np.random.default_rng(41).standard_normal((8, 16)).astype(F32)
    y = np.random.default_rng(42).integers(0, 4, 8)
    graph = pe.capture(lambda a, b: F.cross_entropy(model(a), b), x, y,
                       optimizer=pe.optim.SGD(model.parameters(), lr=0.1))
    forward = [s.op.label() for s in graph.steps if s.kind == "forward"]
    assert forward == ["matmul[ᵀb]+relu", "matmul[ᵀb]+gelu", "matmul[ᵀb]", "cross_entropy"]
    # The backward still runs the activations' own backward steps: GELU's on the kept
    # pre-activation, ReLU's on its output.
    backward = [s.op.name for s in graph.steps if s.kind == "backward"]
    assert backward == ["cross_entropy", "matmul", "gelu", "matmul", "relu", "matmul"]


def test_fused_forward_only_graph_equals_eager_and_keeps_no_preactivation():
    model = _fusion_model(43)
    x = np.random.default_rng(44).standard_normal((8, 16)).astype(F32)
    graph = pe.capture(lambda a: model(a), x)
    fused = [s for s in graph.steps if isinstance(s.op, pe.ops.WithActivation)]
    assert len(fused) == 2 and all(len(s.outs) == 1 for s in fused)
    with pe.no_grad():
        expected = model(pe.Tensor(x)).numpy()
    np.testing.assert_array_equal(graph.run(x).numpy(), expected)


def test_matmul_output_used_twice_is_not_fused():
    pe.manual_seed(45)
    layer = nn.Linear(6, 6)
    x = np.random.default_rng(46).standard_normal((4, 6)).astype(F32)
    def fn(a):
        y = layer(a)
        return (y.relu() + y).sum()

    graph = pe.capture(fn, x)
    assert not any(isinstance(s.op, pe.ops.WithActivation) for s in graph.steps)


def test_check_finite_names_the_first_step_that_writes_a_non_finite_value():
    w = pe.nn.Parameter(np.ones((3, 4), np.float32))
    opt = pe.optim.SGD([w], lr=0.1)

    def loss_fn(x):
        return (x @ w).log().sum()  # log of a negative entry: NaN from the log step on

    x = np.ones((2, 3), np.float32)
    graph = pe.capture(loss_fn, x, optimizer=opt, check_finite=True)
    graph.run(x)  # finite: runs, updates
    before = w.numpy().copy()
    with pytest.raises(pe.graph.NonFiniteError, match=r"forward of log\) wrote 8 non-finite value\(s\)") as error:
        graph.run(-x)
    assert error.value.op == "log" and "(2, 4)" in str(error.value)
    np.testing.assert_array_equal(w.numpy(), before)  # stopped before the update


def test_without_check_finite_non_finite_values_flow_through():
    w = pe.nn.Parameter(np.ones((3, 4), np.float32))
    graph = pe.capture(lambda x: (x @ w).log().sum(), np.ones((2, 3), np.float32), optimizer=pe.optim.SGD([w], lr=0.1))
    assert np.isnan(graph.run(-np.ones((2, 3), np.float32)).item())


def test_profile_is_a_replay_timed_by_op_kind():
    def make():
        pe.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0])
    losses = []
    for profiled in (False, True):
        model = make()
        opt = pe.optim.SGD(model.parameters(), lr=0.1)
        graph = pe.capture(lambda a, b, m=model: F.cross_entropy(m(a), b), x, y, optimizer=opt)
        clock = iter(range(10**6)).__next__  # advances one "second" per reading: no real time read
        rows = graph.profile(x, y, clock=clock) if profiled else graph.run(x, y)
        losses.append(graph.run(x, y).item())  # the second step either way
    assert losses[0] == losses[1]
    kinds = {kind: (seconds, calls) for kind, seconds, calls in rows}
    assert {"cross_entropy forward", "cross_entropy backward", "SGD step"} <= set(kinds)
    assert any(k.startswith("matmul") and k.endswith("backward") for k in kinds)
    assert all(seconds == calls for seconds, calls in kinds.values())  # one tick per timed call
    assert sum(calls for _, calls in kinds.values()) == len(graph._program)
    assert [s for _, s, _ in rows] == sorted((s for _, s, _ in rows), reverse=True)
