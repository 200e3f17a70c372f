"""The executor's fusions on CNNs: a convolution and the ReLU that alone reads it (one kernel, the
ReLU in the pass that adds the bias), a residual add and its ReLU (add_relu, forward and backward),
and, in eval graphs, a batch norm with running statistics folded into the convolution before it.

Each is checked against the same graph captured with the fusion off (fuse=False,
fold_batch_norm=False): the plan loses exactly the fused steps, the results are the same bits
(folding: within the stated tolerance), and gradients through the fused steps match torch float64.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import F32, torch
from test_cnn_models import build_pair, close, digits_batches

import pyengine as pe
from pyengine import functional as F
from pyengine import nn
from pyengine.models.resnet import BasicBlock
from pyengine.tensor import Tensor

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")


def _labels(graph, kind="forward"):
    return [s.op.label() for s in graph.steps if s.kind == kind]


class _ConvNet(nn.Module):
    """conv (bias) -> relu -> conv (no bias, stride 2) -> relu -> depthwise conv -> relu -> linear."""

    def __init__(self, seed):
        super().__init__()
        pe.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Linear(8 * 4 * 5, 3)

    def forward(self, x):
        h = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))
        return self.head(h.reshape(h.shape[0], -1))


def _images(seed, shape=(4, 3, 8, 9)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(F32), rng.integers(0, 3, shape[0]).astype(np.int64)


# ------------------------------------------------------------------ convolution + ReLU


def test_conv_relu_training_step_fuses_each_pair_and_equals_unfused_bit_for_bit():
    x, y = _images(1)
    graphs, models = {}, {}
    for fuse in (True, False):
        models[fuse] = _ConvNet(2)
        opt = pe.optim.SGD(models[fuse].parameters(), lr=0.1, momentum=0.9)
        graphs[fuse] = pe.capture(lambda a, b, m=models[fuse]: F.cross_entropy(m(a), b), x, y, optimizer=opt,
                                  fuse=fuse)
    fused, plain = graphs[True], graphs[False]
    assert [label for label in _labels(fused) if "conv2d" in label] == [
        "conv2d(stride=(1, 1), padding=(1, 1), dilation=(1, 1))+relu",
        "conv2d(stride=(2, 2), padding=(1, 1), dilation=(1, 1))+relu",
        "conv2d(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=8)+relu"]
    assert len(plain.steps) - len(fused.steps) == 3  # three ReLU forward steps gone
    assert "relu forward" not in fused.plan_text() and fused.plan_text().count("+relu") == 3
    # The backward steps are the two ops' own; ReLU's reads its output, so no conv output is kept.
    assert _labels(fused, "backward") == _labels(plain, "backward")
    assert fused.planned_bytes < plain.planned_bytes  # the convolutions' outputs are not buffers any more
    for step in range(3):
        xs, ys = _images(10 + step)
        assert fused.run(xs, ys).item() == plain.run(xs, ys).item()
        for (name, a), (_, b) in zip(models[True].named_parameters(), models[False].named_parameters()):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
            np.testing.assert_array_equal(a.grad.numpy(), b.grad.numpy(), err_msg=name)


@needs_torch
def test_conv_relu_fused_gradients_match_torch_float64():
    """Gradients through the fused conv+ReLU steps against torch autograd in float64 (2e-5 relative
    to each gradient's largest entry: float32 sums of at most 72 products)."""
    x, y = _images(3)
    model = _ConvNet(4)
    graph = pe.capture(lambda a, b: F.cross_entropy(model(a), b), x, y,
                       optimizer=pe.optim.SGD(model.parameters(), lr=0.0))
    assert sum("+relu" in label for label in _labels(graph)) == 3
    loss = graph.run(x, y).item()
    tf = torch.nn.functional
    params = {k: torch.tensor(v.numpy().astype(np.float64), requires_grad=True)
              for k, v in model.named_parameters()}
    h = torch.relu(tf.conv2d(torch.tensor(x, dtype=torch.float64), params["conv1.weight"], params["conv1.bias"],
                             padding=1))
    h = torch.relu(tf.conv2d(h, params["conv2.weight"], stride=2, padding=1))
    h = torch.relu(tf.conv2d(h, params["conv3.weight"], params["conv3.bias"], padding=1, groups=8))
    t_loss = tf.cross_entropy(tf.linear(h.flatten(1), params["head.weight"], params["head.bias"]), torch.tensor(y))
    t_loss.backward()
    assert abs(loss - t_loss.item()) <= 1e-5 * abs(t_loss.item())
    for name, p in model.named_parameters():
        close(p.grad.numpy(), params[name].grad.numpy(), name, rtol=2e-5)


def test_conv_gelu_is_fused_only_where_no_backward_reads_its_input():
    """GELU's backward reads the conv output, which the convolution cannot also write: a training
    step leaves the pair apart, an eval graph fuses it (same bits as the two kernels)."""
    pe.manual_seed(5)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x, _ = _images(6)

    def fn(a):
        return F.gelu(conv(a), approximate="tanh").sum()

    train = pe.capture(fn, x, optimizer=pe.optim.SGD(conv.parameters(), lr=0.1))
    assert [label.split("(")[0] for label in _labels(train)] == ["conv2d", "gelu", "sum"]
    inference = pe.capture(lambda a: F.gelu(conv(a), approximate="tanh"), x)
    assert [label.split("(")[0] for label in _labels(inference)] == ["conv2d"]
    assert _labels(inference)[0].endswith("+gelu")
    with pe.no_grad():
        expected = F.gelu(conv(Tensor(x)), approximate="tanh").numpy()
    np.testing.assert_array_equal(inference.run(x).numpy(), expected)


def test_conv_output_read_twice_is_not_fused():
    pe.manual_seed(7)
    conv = nn.Conv2d(3, 3, 1)
    x, _ = _images(8)
    def fn(a):
        y = conv(a)
        return y.relu() + y

    graph = pe.capture(fn, x)
    assert not any("+relu" in label for label in _labels(graph))


# ------------------------------------------------------------------ residual add + ReLU


def test_basic_block_training_fuses_add_relu_forward_and_backward():
    """ResNet's basic block under capture: its closing add and ReLU are one add_relu step forward
    and one backward (the ReLU backward and the add's gradient buffer go); bits equal unfused."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 6, 6)).astype(F32)
    blocks, graphs = {}, {}
    for fuse in (True, False):
        pe.manual_seed(10)
        blocks[fuse] = BasicBlock(4, 4)
        opt = pe.optim.SGD(blocks[fuse].parameters(), lr=0.1, momentum=0.9)
        graphs[fuse] = pe.capture(lambda a, b=blocks[fuse]: (b(a) * b(a)).mean(), x, optimizer=opt, fuse=fuse)
    fused, plain = graphs[True], graphs[False]
    assert _labels(fused).count("add+relu") == 2 and "add+relu" not in _labels(plain)
    assert _labels(fused, "backward").count("add+relu") == 2
    # per block call: add+relu forward and backward (the first ReLU follows a batch norm: apart)
    assert len(plain.steps) - len(fused.steps) == 2 * 2
    for seed in range(3):
        xs = np.random.default_rng(20 + seed).standard_normal(x.shape).astype(F32)
        assert fused.run(xs).item() == plain.run(xs).item()
        for (name, a), (_, b) in zip(blocks[True].named_parameters(), blocks[False].named_parameters()):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)
            np.testing.assert_array_equal(a.grad.numpy(), b.grad.numpy(), err_msg=name)
        for name in ("bn1.running_mean", "bn2.running_var"):
            np.testing.assert_array_equal(np.asarray(blocks[True].state_dict()[name]),
                                          np.asarray(blocks[False].state_dict()[name]), err_msg=name)


@needs_torch
def test_add_relu_fused_gradients_match_torch_float64_with_a_shared_operand():
    """relu(a @ w + a): the add's operands share a gradient buffer (one accumulates after the other)."""
    rng = np.random.default_rng(11)
    a0 = rng.standard_normal((5, 6)).astype(F32)
    w = pe.nn.Parameter(rng.standard_normal((6, 6)).astype(F32))
    a = pe.nn.Parameter(a0)

    def fn():
        return ((a @ w + a).relu() * Tensor(np.linspace(-1, 1, 30, dtype=F32).reshape(5, 6))).sum()

    graph = pe.capture(lambda dummy: fn(), np.zeros(1, F32), optimizer=pe.optim.SGD([a, w], lr=0.0))
    assert "add+relu" in _labels(graph, "backward")
    graph.run(np.zeros(1, F32))
    ta = torch.tensor(a0.astype(np.float64), requires_grad=True)
    tw = torch.tensor(w.numpy().astype(np.float64), requires_grad=True)
    scale = torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(5, 6)
    (torch.relu(ta @ tw + ta) * scale).sum().backward()
    close(a.grad.numpy(), ta.grad.numpy(), "grad a", rtol=1e-5)
    close(w.grad.numpy(), tw.grad.numpy(), "grad w", rtol=1e-5)


def test_broadcast_add_is_not_fused():
    pe.manual_seed(12)
    x = np.random.default_rng(13).standard_normal((3, 4)).astype(F32)
    b = Tensor(np.ones(4, F32))
    graph = pe.capture(lambda t: (t + b).relu(), x)
    assert "add+relu" not in _labels(graph)


# ------------------------------------------------------------------ batch norm folded in eval


def _eval_resnet():
    ours, theirs = build_pair("resnet")
    (x, _), = digits_batches(1)
    # running statistics that are not the defaults: a few training-mode batches
    for xb, _ in digits_batches(3, seed=1):
        ours(Tensor(xb))
    ours.eval()
    theirs.load_state_dict({k: torch.tensor(np.array(v)) for k, v in ours.state_dict().items()})
    theirs.eval()
    return ours, theirs, x


@needs_torch
def test_eval_resnet_folds_every_batch_norm_and_matches_torch():
    """Eval graph: every batch norm (each follows a convolution it alone reads) is folded, and the
    stem and first convolution of each block then take their ReLU too. Logits within 1e-4 of
    torch's eval ResNet (relative to the largest), and within 1e-5 of the unfolded graph."""
    ours, theirs, x = _eval_resnet()
    folded = pe.capture(lambda a: ours(a), x)
    plain = pe.capture(lambda a: ours(a), x, fold_batch_norm=False)
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in ours.modules())
    blocks = sum(isinstance(m, BasicBlock) for m in ours.modules())
    assert (batch_norms, blocks) == (11, 4)
    assert not any(label.startswith("batch_norm") for label in _labels(folded))
    assert sum("+batch_norm" in label for label in _labels(folded)) == batch_norms
    # the batch norms go, and the ReLU after the stem's and each block's first one joins its conv
    assert len(plain.steps) - len(folded.steps) == batch_norms + 1 + blocks
    assert sum(label.endswith("+batch_norm+relu") for label in _labels(folded)) == 1 + blocks
    with torch.no_grad():
        expected = theirs(torch.tensor(x)).numpy()
    got = folded.run(x).numpy().copy()
    close(got, expected, "logits vs torch", rtol=1e-4)
    close(got, plain.run(x).numpy(), "logits vs unfolded", rtol=1e-5)
    np.testing.assert_array_equal(folded.run(x).numpy(), got)  # replay: the same bits again


@needs_torch
def test_folded_weights_follow_the_parameters_between_runs():
    """The rule: folded at bind time, and again at the first run() after pyengine writes a parameter
    or buffer in place (optimizer step, load_state_dict, training-mode batch norm); a direct write
    into a parameter's array needs refold()."""
    ours, theirs, x = _eval_resnet()
    graph = pe.capture(lambda a: ours(a), x)

    def expected():
        theirs.load_state_dict({k: torch.tensor(np.array(v)) for k, v in ours.state_dict().items()})
        with torch.no_grad():
            return theirs(torch.tensor(x)).numpy()

    before = graph.run(x).numpy().copy()
    close(before, expected(), "initial")
    # an eager SGD step changes the weights: the next run folds again
    opt = pe.optim.SGD(ours.parameters(), lr=0.5)
    F.cross_entropy(ours(Tensor(x)), np.zeros(len(x), np.int64)).backward()
    opt.step()
    after_step = graph.run(x).numpy().copy()
    assert not np.allclose(after_step, before)
    close(after_step, expected(), "after an optimizer step")
    # load_state_dict: new weights and running statistics
    state = {k: np.array(v) * np.float32(1.5) if k.endswith("running_var") else np.array(v)
             for k, v in ours.state_dict().items()}
    ours.load_state_dict(state)
    close(graph.run(x).numpy(), expected(), "after load_state_dict")
    # training-mode batch norm updates the running statistics
    ours.train()
    ours(Tensor(x))
    ours.eval()
    close(graph.run(x).numpy(), expected(), "after a training-mode forward")
    # a write pyengine does not see: stale until refold()
    stale = graph.run(x).numpy().copy()
    ours.conv1.weight.data[...] *= 2
    np.testing.assert_array_equal(graph.run(x).numpy(), stale)
    graph.refold()
    close(graph.run(x).numpy(), expected(), "after refold()")


def test_training_graph_and_computed_weights_do_not_fold():
    """A training step keeps its batch norms (their backward needs them); a convolution whose weight
    is computed in the graph is not folded (it changes every run)."""
    pe.manual_seed(15)
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
    bn.eval()
    x, _ = _images(16)
    train = pe.capture(lambda a: bn(conv(a)).sum(), x, optimizer=pe.optim.SGD(conv.parameters(), lr=0.1))
    assert any(label.startswith("batch_norm") for label in _labels(train))
    scale = Tensor(np.full((4, 1, 1, 1), 0.5, F32))
    computed = pe.capture(lambda a: bn(F.conv2d(a, conv.weight * scale, padding=1)), x)
    assert any(label.startswith("batch_norm") for label in _labels(computed))
    folded = pe.capture(lambda a: bn(conv(a)), x)
    assert [label.split("(")[0] for label in _labels(folded)] == ["conv2d"]
    with pe.no_grad():
        close(folded.run(x).numpy(), bn(conv(Tensor(x))).numpy(), "folded conv+bn", rtol=1e-5)
