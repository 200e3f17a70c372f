"""Capture a computation once, replay it as a static, memory-planned graph.

``capture(fn, *example_inputs, optimizer=opt)`` runs `fn` eagerly once on the
example inputs while recording every op (graph building), then:

1. orders the recorded nodes topologically from the output (iteratively);
2. adds a backward step per differentiable node, in reverse order, and the
   optimizer's update, when an optimizer is given (a training step);
3. gives every temporary value (activations, saved values, gradients of
   intermediates, the inputs) a lifetime over the schedule and places them
   in one 64-byte aligned arena by liveness (pyengine.graph.planner);
4. binds each step to its arrays once.

``graph.run(*inputs)`` then copies the inputs into their buffers and calls the
bound steps in order: no array is allocated, no shape is inferred again.
Parameters, their gradients and the optimizer's state live outside the
arena (they persist across steps); ``param.grad`` is the gradient buffer.
Reshapes are views: their outputs, and their gradients, share the memory of
their inputs instead of being copied.
"""

from __future__ import annotations

import functools
import os
import time
import weakref
from dataclasses import dataclass, field

import numpy as np

from pyengine import _C
from pyengine import ops as O
from pyengine import ops_cnn as OC
from pyengine import random as R
from pyengine.graph.planner import ALIGNMENT, Interval, place
from pyengine.tensor import GRAPHS, Tensor, _capturing, _unshare, topological_order

__all__ = ["capture", "CompiledGraph", "NonFiniteError"]

PERSISTENT_KINDS = ("param", "param_grad", "const")
# A weight tensor -> (a weak reference to the array copied, its (in, out) copy), shared by the graphs
# captured with transpose_weights over it (CompiledGraph._transpose_weights).
_TRANSPOSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class Value:
    """A buffer of the graph."""

    index: int
    spec: O.Spec
    kind: str  # input | param | param_grad | const | activation | saved | grad
    name: str
    alias_of: Value | None = None  # this value is a view of another one's memory
    array: np.ndarray | None = None  # bound at plan time
    offset: int | None = None  # in the arena, for planned roots
    view_op: O.Op | None = None  # the view op whose output (or gradient) this alias is

    def view(self, base: np.ndarray) -> np.ndarray:
        """This alias's array, as a view of its base's array: a reshape, or
        the view op's own view (a slice, for a piece of a split)."""
        if self.view_op is not None and hasattr(self.view_op, "view_of"):
            return self.view_op.view_of(base, self.spec)
        return base.reshape(self.spec.shape)

    @property
    def root(self) -> Value:
        value = self
        while value.alias_of is not None:
            value = value.alias_of
        return value


@dataclass(eq=False)
class Step:
    kind: str  # forward | backward
    op: O.Op
    ins: list
    outs: list
    grad_out: Value | None = None
    grad_ins: list = field(default_factory=list)  # Value or None per input
    zero_first: list = field(default_factory=list)  # grad roots first written here

    def reads(self) -> list:
        if self.kind == "forward":
            return list(self.ins)
        # Only what the backward reads (its declaration says which forward
        # values): the others' buffers are free once the forward is done.
        return [*self.op.saved(self.ins, self.outs), self.grad_out]

    def writes(self) -> list:
        return list(self.outs) if self.kind == "forward" else [g for g in self.grad_ins if g is not None]


def capture(fn, *example_inputs, optimizer=None, check_finite: bool = False, fuse: bool = True,
            fold_batch_norm: bool = True, transpose_weights: bool = False) -> CompiledGraph:
    """Record `fn(*inputs)` and compile it; with `optimizer`, the graph is a
    full training step (forward, backward of the scalar output, update).

    fuse: run a matmul, convolution or add and the activation that alone
    reads it as one kernel (CompiledGraph._fuse_activations).
    fold_batch_norm: without an optimizer (eval), fold a batch norm with
    running statistics into the convolution before it
    (CompiledGraph._fold_batch_norms). Either off gives the ops as recorded.
    transpose_weights: without an optimizer, a matmul by a transposed 2-D
    parameter or constant (linear's x @ w.T) reads an (in, out) copy of the
    weight instead (CompiledGraph._transpose_weights): the GEMM's
    small-problem path reads such a B in place, where it packs a transposed
    one (128 rows x 384 x 1152, 1 thread: 10-20% faster). The copies double
    the memory of the weights they copy (graphs over the same weights share
    them).

    check_finite: after every step of each replay, check what the step wrote
    and raise NonFiniteError at the first inf or NaN, naming the step, its op
    and the shapes it read, before the optimizer can apply it (a debugging
    guard: each check reads the buffers once more and allocates a mask)."""
    inputs = [Tensor(np.array(x.data if isinstance(x, Tensor) else x)) for x in example_inputs]
    with _capturing(), R.capture_streams() as streams:
        output = fn(*inputs)
    if not isinstance(output, Tensor):
        raise TypeError(f"capture: fn must return a Tensor, got {type(output).__name__}")
    if optimizer is not None and (output.size != 1 or not output.requires_grad):
        raise ValueError(f"capture: a training step needs a scalar loss that requires grad, got shape {output.shape}")
    return CompiledGraph(inputs, output, optimizer, streams, check_finite=check_finite, fuse=fuse,
                         fold_batch_norm=fold_batch_norm, transpose_weights=transpose_weights)


class NonFiniteError(FloatingPointError):
    """A replayed step wrote inf or NaN (capture(..., check_finite=True))."""

    def __init__(self, message: str, step_index: int, op: str):
        super().__init__(message)
        self.step_index, self.op = step_index, op


class CompiledGraph:
    def __init__(self, inputs: list, output: Tensor, optimizer=None, streams=None, check_finite: bool = False,
                 fuse: bool = True, fold_batch_norm: bool = True, transpose_weights: bool = False):
        self.optimizer = optimizer
        GRAPHS.add(self)  # Tensor.data assignment asks holds()
        self.check_finite = bool(check_finite)
        self._streams = streams  # the random ops' rng buffers, refilled per replay (pyengine.random)
        self.values: list = []
        self._by_tensor: dict = {}
        self._grad_of: dict = {}
        self.inputs = [self._new_value(t, "input", f"input{i}") for i, t in enumerate(inputs)]
        order = topological_order([output], lambda t: () if t._node is None else t._node.inputs)
        self.steps = self._forward_steps(order)
        self.output = self._value_of(output)
        self.params = []
        self._untouched_params = []
        if optimizer is not None:
            self.steps += self._backward_steps(order, output)
            # Parameters the optimizer holds but the graph does not reach get
            # no gradient, as after zero_grad() in an eager loop.
            reached = {id(tensor) for tensor, _ in self.params}
            self._untouched_params = [p for p in optimizer.params if id(p) not in reached]
        self._folds: list = []  # (conv params, batch norm step, folded weight, folded bias): _fold_batch_norms
        if optimizer is None and fold_batch_norm:
            self._fold_batch_norms()
        self._transposes: list = []  # (weight array, its (in, out) copy): _transpose_weights
        if optimizer is None and transpose_weights:
            self._transpose_weights()
        if fuse:
            self._fuse_activations()
            if optimizer is None:
                self._fuse_add_layer_norms()
        if optimizer is not None:
            self._overwrite_first_gradients()
        self.arena_bytes, self.planned_bytes = self._plan()
        self._program = self._bind()
        self.refold()
        # The capture pass's own tensors were needed only to build the graph; held here, they
        # would keep that pass's activations alive beside the arena for the graph's lifetime
        # (GPT-2 124M: about 0.9 GiB). Parameters and constants stay: holds() asks for them.
        self._by_tensor = {key: entry for key, entry in self._by_tensor.items()
                           if entry[1].kind in ("param", "const")}

    # ---------------------------------------------------------------- building
    def _new_value(self, tensor, kind, name, spec=None, alias_of=None) -> Value:
        spec = spec or O.Spec(tensor.shape, tensor.dtype)
        value = Value(len(self.values), spec, kind, name, alias_of)
        self.values.append(value)
        if tensor is not None:
            self._by_tensor[id(tensor)] = (tensor, value)
        return value

    def holds(self, tensor: Tensor) -> bool:
        """Whether the graph reads `tensor`'s array in place (a parameter or a constant)."""
        entry = self._by_tensor.get(id(tensor))
        return entry is not None and entry[0] is tensor and entry[1].kind in ("param", "const")

    def _value_of(self, tensor: Tensor) -> Value:
        entry = self._by_tensor.get(id(tensor))
        if entry is not None:
            return entry[1]
        # A leaf that is not an input: a parameter or a constant, used in place.
        kind = "param" if tensor.requires_grad else "const"
        value = self._new_value(tensor, kind, tensor.name or f"{kind}{len(self.values)}")
        value.array = tensor.data
        return value

    def _forward_steps(self, order: list) -> list:
        steps = []
        for tensor in order:
            node = tensor._node
            if node is None:
                self._value_of(tensor)
                continue
            ins = [self._value_of(t) for t in node.inputs]
            specs = node.op.infer(*(v.spec for v in ins))
            alias = ins[0] if node.op.is_view else None
            outs = [self._new_value(tensor, "activation", f"{node.op.name}{len(self.values)}", specs[0], alias)]
            outs[0].view_op = node.op if alias is not None else None
            outs += [self._new_value(None, "saved", f"{node.op.name}.saved{i}", s) for i, s in enumerate(specs[1:], 1)]
            # A view's step runs no kernel; it stays in the schedule so the
            # lifetimes of its buffers are right.
            steps.append(Step("forward", node.op, ins, outs))
        return steps

    def _grad_value(self, tensor: Tensor) -> Value:
        """The gradient buffer of `tensor`. A view's gradient is a view of its
        input's gradient, so backward through a reshape needs no step."""
        value = self._grad_of.get(id(tensor))
        if value is not None:
            return value
        source = self._value_of(tensor)
        node = tensor._node
        if node is not None and node.op.is_view:
            base = self._grad_value(node.inputs[0])
            value = self._new_value(None, "grad", f"grad({source.name})", source.spec, alias_of=base)
            value.view_op = node.op  # the same view of the input's gradient
        elif node is None:
            value = self._new_value(None, "param_grad", f"grad({source.name})", source.spec)
            self.params.append((tensor, value))
        else:
            value = self._new_value(None, "grad", f"grad({source.name})", source.spec)
        self._grad_of[id(tensor)] = value
        return value

    def _backward_steps(self, order: list, loss: Tensor) -> list:
        # The seed d(loss)/d(loss) = 1 belongs to the first non-view tensor
        # under the loss, so that a loss reshaped at the end shares it.
        base = loss
        while base._node is not None and base._node.op.is_view and base._node.inputs[0].size == base.size:
            base = base._node.inputs[0]
        seed = self._new_value(None, "const", "grad(loss)", O.Spec(base.shape))
        seed.array = np.ones(base.shape, dtype=np.float32)
        self._grad_of[id(base)] = seed
        self._grad_value(loss)
        forward_step = {id(s.outs[0]): s for s in self.steps}
        steps, written = [], set()
        for tensor in reversed(order):
            node = tensor._node
            if node is None or not tensor.requires_grad or id(tensor) not in self._grad_of:
                continue
            forward = forward_step[id(self._value_of(tensor))]
            grad_ins = [self._grad_value(t) if t.requires_grad else None for t in node.inputs]
            if node.op.is_view:
                continue  # the gradient buffers are shared
            step = Step("backward", node.op, forward.ins, forward.outs, self._grad_of[id(tensor)], grad_ins)
            for grad in grad_ins:
                if grad is not None and id(grad.root) not in written:
                    written.add(id(grad.root))
                    step.zero_first.append(grad.root)
            steps.append(step)
        return steps

    def _fold_batch_norms(self) -> None:
        """Eval mode (no backward): a convolution whose output is read by an
        eval-mode batch norm alone (running statistics) runs as one
        convolution with the batch norm folded into its weight and bias
        (ops_cnn.fold_batch_norm): the batch norm's pass over the activations
        goes. The folded weight and bias are graph constants, computed from
        the current parameters and statistics at bind time, and again at the
        first run() after pyengine writes any parameter or buffer in place
        (an optimizer step, load_state_dict, a training-mode batch norm);
        after writing into parameter arrays directly, call refold()."""
        readers: dict = {}
        for step in self.steps:
            for value in step.ins:
                readers.setdefault(id(value.root), []).append(step)
        steps, removed = [], set()
        for step in self.steps:
            if id(step) in removed:
                continue
            consumers = readers.get(id(step.outs[0].root), [])
            bn = consumers[0] if len(consumers) == 1 else None
            if (type(step.op) is not O.Conv2d or step.outs[0] is self.output or bn is None
                    or not isinstance(bn.op, OC.BatchNorm) or bn.op.batch_stats or bn.op.running_mean is None
                    or step.outs[0] is not bn.ins[0]
                    or any(v.kind not in PERSISTENT_KINDS for v in step.ins[1:] + bn.ins[1:])):  # computed weights
                steps.append(step)
                continue
            weight = step.ins[1]
            folded_weight = self._new_value(None, "const", f"folded({weight.name})", weight.spec)
            folded_bias = self._new_value(None, "const", f"folded_bias({bn.outs[0].name})",
                                          O.Spec((weight.spec.shape[0],)))
            folded_weight.array = np.empty(weight.spec.shape, np.float32)
            folded_bias.array = np.empty(folded_bias.spec.shape, np.float32)
            self._folds.append((step.ins[1:], bn, folded_weight.array, folded_bias.array))
            steps.append(Step("forward", OC.ConvBatchNorm(step.op), [step.ins[0], folded_weight, folded_bias],
                              [bn.outs[0]]))
            removed.add(id(bn))
        self.steps = steps

    def refold(self) -> None:
        """Fold the batch norms into their convolutions again from the
        current parameters and running statistics (see _fold_batch_norms);
        run() does it by itself after pyengine's own in-place writes."""
        for conv_params, bn, weight, bias in self._folds:
            conv_weight = conv_params[0].array
            conv_bias = conv_params[1].array if len(conv_params) > 1 else None
            gamma, beta = bn.op._affine([None, *(v.array for v in bn.ins[1:])])
            OC.fold_batch_norm(conv_weight, conv_bias, bn.op.running_mean, bn.op.running_var, gamma, beta,
                               bn.op.eps, weight, bias)
        for weight, copy in self._transposes:
            np.copyto(copy, weight.T)
        self._folded_at = O.PARAMETER_WRITES[0]

    def _transpose_weights(self) -> None:
        """Eval mode: each matmul step of op(A) = A by a transposed 2-D
        parameter or constant B (out, in) multiplies by a constant (in, out)
        copy of B, untransposed. The copy is made by refold() (at bind time,
        and again after pyengine writes parameters in place, as the folds),
        and shared with the other graphs over the same tensor (_TRANSPOSED)."""
        tensor_of = {id(value): tensor for tensor, value in self._by_tensor.values()}
        for index, step in enumerate(self.steps):
            op, weight = step.op, step.ins[1] if len(step.ins) > 1 else None
            tensor = None if weight is None else tensor_of.get(id(weight))
            if (type(op) is not O.MatMul or not op.trans_b or op.trans_a or tensor is None
                    or weight.kind not in ("param", "const") or len(weight.spec.shape) != 2):
                continue
            entry = _TRANSPOSED.get(tensor)
            if entry is None or entry[0]() is not tensor.data:
                entry = (weakref.ref(tensor.data), np.empty(weight.spec.shape[::-1], np.float32))
                _TRANSPOSED[tensor] = entry
            copy = self._new_value(None, "const", f"transposed({weight.name})", O.Spec(entry[1].shape))
            copy.array = entry[1]
            self._transposes.append((weight.array, copy.array))
            self.steps[index] = Step("forward", O.MatMul(), [step.ins[0], copy, *step.ins[2:]], step.outs)

    def _fuse_activations(self) -> None:
        """One pass over the steps with the table of fusible producers
        (ops.FUSIONS): a matmul, a convolution or an add and the activation
        that alone reads its output run as one kernel, the activation in the
        producer's epilogue (one pass over the output saved). The producer's
        output is still written when a backward step reads it (matmul's
        preact); a producer that cannot write it is then left alone. The
        backward steps stay those of the two ops (they hold the buffers they
        read), except where the fused op has its own backward (add+relu): it
        replaces the add's backward step, in its place in the schedule, and
        the ReLU's goes."""
        readers: dict = {}
        backward_of: dict = {}  # id(forward output 0) -> its backward step
        for step in self.steps:
            if step.kind == "forward":
                for value in step.ins:
                    readers.setdefault(id(value.root), []).append(step)
            else:
                backward_of[id(step.outs[0])] = step
        read_backward = {id(v.root) for step in self.steps if step.kind == "backward" for v in step.reads()}
        fused, removed, replaced = [], set(), {}
        for step in self.steps:
            if id(step) in removed:
                continue
            if id(step) in replaced:
                fused.append(replaced[id(step)])
                continue
            match = self._fusion_after(step, readers, read_backward)
            if match is None:
                fused.append(step)
                continue
            fusion, act, op, keep = match
            fused.append(Step("forward", op, step.ins, [act.outs[0], *keep]))
            removed.add(id(act))
            act_backward, producer_backward = backward_of.get(id(act.outs[0])), backward_of.get(id(step.outs[0]))
            if fusion.fuses_backward and act_backward is not None and producer_backward is not None:
                removed.add(id(act_backward))
                replaced[id(producer_backward)] = Step(
                    "backward", op, step.ins, [act.outs[0]], act_backward.grad_out, producer_backward.grad_ins,
                    producer_backward.zero_first)
        self.steps = fused

    def _overwrite_first_gradients(self) -> None:
        """A backward step that writes each of its gradients first and whole, with a kernel that
        can overwrite them (KernelOp.overwriting), overwrites them: their buffers are not zeroed
        before. Where its declaration also lets a gradient be one of the inputs the step reads
        (may_alias), and this step is that input's last reader, the gradient takes the input's
        memory: GPT-2 124M's LM-head gradient (1024 x 50257 floats, 196 MiB) is written over its
        logits."""
        span = self._lifetimes()
        for index, step in enumerate(self.steps):
            op = step.op.overwriting() if step.kind == "backward" and isinstance(step.op, O.KernelOp) else None
            grads = [g for g in step.grad_ins if g is not None]
            roots = [g.root for g in grads]
            # Written first (zeroed here until now), whole (not a piece of a larger buffer), once.
            if (op is None or not grads or len({id(r) for r in roots}) != len(roots)
                    or any(not any(r is z for z in step.zero_first) or r.spec.nbytes != g.spec.nbytes
                           for r, g in zip(roots, grads))):
                continue
            step.op = op
            step.zero_first = [z for z in step.zero_first if not any(z is r for r in roots)]
            for grad_index, input_index in op.pair.grad_over_input:
                grad = step.grad_ins[grad_index] if grad_index < len(step.grad_ins) else None
                if grad is None or grad.root.kind != "grad" or input_index >= len(step.ins):
                    continue
                source = step.ins[input_index].root
                if (source.kind in ("activation", "saved") and source is not self.output.root
                        and source.spec.nbytes == step.ins[input_index].spec.nbytes == grad.root.spec.nbytes
                        and source.spec.dtype == grad.root.spec.dtype
                        and span.get(id(source), (index, -1))[1] == index):
                    grad.root.alias_of = source  # a reshape of the input's buffer, same bytes

    def _fuse_add_layer_norms(self) -> None:
        """Without a backward: an add of two same-shape operands whose output a layer norm alone
        reads (over the same shape) runs as one add_layer_norm kernel in the layer norm's place,
        the sum never written (a post-LN transformer block's end: one pass over the rows, not two)."""
        readers: dict = {}
        for step in self.steps:
            for value in step.ins:
                readers.setdefault(id(value.root), []).append(step)
        adds = {}  # id(layer norm step) -> the add it absorbs
        for step in self.steps:
            consumers = readers.get(id(step.outs[0].root), [])
            norm = consumers[0] if len(consumers) == 1 else None
            if (type(step.op) is O.Binary and step.op.name == "add" and step.outs[0] is not self.output
                    and norm is not None and type(norm.op) is O.LayerNorm and norm.ins[0] is step.outs[0]
                    and step.outs[0] not in norm.ins[1:] and len({v.spec.shape for v in step.ins + step.outs}) == 1):
                adds[id(norm)] = step
        absorbed = {id(add) for add in adds.values()}
        fused = []
        for step in self.steps:
            if id(step) in absorbed:
                continue
            add = adds.get(id(step))
            fused.append(step if add is None else
                         Step("forward", O.AddLayerNorm(step.op.eps), [*add.ins, *step.ins[1:]], step.outs))
        self.steps = fused

    def _fusion_after(self, step: Step, readers: dict, read_backward: set):
        """(fusion, activation step, fused op, kept producer outputs) when a
        forward step's output is read by one activation step alone and the
        table fuses the two; else None."""
        if step.kind != "forward" or step.outs[0] is self.output:
            return None
        fusion = next((f for f in O.FUSIONS if isinstance(step.op, f.producer)), None)
        consumers = readers.get(id(step.outs[0].root), [])
        if fusion is None or len(consumers) != 1:
            return None
        act = consumers[0]
        if not (isinstance(act.op, O.Unary) and act.op.name in fusion.activations):
            return None
        keep = [step.outs[0]] if id(step.outs[0].root) in read_backward else []
        if keep and not fusion.writes_preact:
            return None
        op = fusion.fused(step.op, act.op.name, [v.spec for v in step.ins])
        return None if op is None else (fusion, act, op, keep)

    # ---------------------------------------------------------------- planning
    def _lifetimes(self) -> dict:
        """[first, last] schedule index per planned root value."""
        span: dict = {}

        def touch(value, index):
            root = value.root
            if root.kind in PERSISTENT_KINDS:
                return
            first, last = span.get(id(root), (index, index))
            span[id(root)] = (min(first, index), max(last, index))

        for value in self.inputs:
            touch(value, -1)  # filled before the first step
        for index, step in enumerate(self.steps):
            for value in step.reads() + step.writes():
                touch(value, index)
        touch(self.output, len(self.steps))  # read by the caller after the last step
        return span

    def _plan(self) -> tuple:
        span = self._lifetimes()
        roots = [v for v in self.values if id(v) in span]
        intervals = [Interval(*span[id(v)], v.spec.nbytes) for v in roots]
        offsets, total = place(intervals)
        for value, offset in zip(roots, offsets):
            value.offset = offset
        self._planned_roots = roots
        return total, sum(i.nbytes for i in intervals)

    def _bind(self) -> list:
        self.arena = _allocate_arena(self.arena_bytes + ALIGNMENT)
        shift = (-self.arena.ctypes.data) % ALIGNMENT
        for value in self._planned_roots:
            start = shift + value.offset
            raw = self.arena[start:start + value.spec.nbytes]
            value.array = raw.view(value.spec.dtype).reshape(value.spec.shape)
        for _, grad in self.params:
            grad.array = np.zeros(grad.spec.shape, dtype=np.float32)
        for value in self.values:  # views of other buffers, each after the one it views
            if value.array is None and value.alias_of is not None:
                value.array = value.view(value.alias_of.array)
        program, self._labels = [], []
        for index, step in enumerate(self.steps):
            if step.kind == "forward" and step.op.is_view:
                continue
            arrays = lambda values: [None if v is None else v.array for v in values]  # noqa: E731
            program += [_zeroer(root.array) for root in step.zero_first]
            self._labels += ["zero gradients"] * len(step.zero_first)
            if step.kind == "forward":
                program.append(step.op.bind_forward(arrays(step.outs), arrays(step.ins)))
                self._labels.append(f"{step.op.name} forward")
            else:
                grads = arrays(step.grad_ins)
                shared = _unshare(grads)  # an input given twice: its repeat accumulates apart, then is added
                program += [_zeroer(own) for _, own in shared]
                program.append(step.op.bind_backward(grads, step.grad_out.array, arrays(step.ins), arrays(step.outs)))
                program += [functools.partial(np.add, buffer, own, out=buffer) for buffer, own in shared]
                self._labels += ["zero gradients"] * len(shared) + [f"{step.op.name} backward"]
                self._labels += ["add a repeated input's gradient"] * len(shared)
            if self.check_finite:
                program.append(functools.partial(self._check_step, index, step))
                self._labels.append("check_finite")
        if self.optimizer is not None:
            program.append(self.optimizer.step)
            self._labels.append(f"{type(self.optimizer).__name__} step")
        return program

    # ---------------------------------------------------------------- running
    def run(self, *inputs) -> Tensor:
        """Replay the graph on new inputs (same shapes and dtypes as captured).

        Returns the output as a Tensor over its arena buffer: it is overwritten
        by the next run, so copy it if you keep it.
        """
        self._load_inputs(inputs)
        for call in self._program:
            call()
        return Tensor(self.output.array)

    __call__ = run

    def profile(self, *inputs, clock=time.perf_counter) -> list:
        """Replay once, as run(), timing every call with `clock` (seconds):
        [(op kind, seconds, calls)] summed by op and pass (``"matmul forward"``,
        ``"layer_norm backward"``, the optimizer's step, ...), slowest first."""
        self._load_inputs(inputs)
        totals: dict = {}
        for label, call in zip(self._labels, self._program):
            start = clock()
            call()
            seconds, count = totals.get(label, (0.0, 0))
            totals[label] = (seconds + clock() - start, count + 1)
        return sorted(((k, s, n) for k, (s, n) in totals.items()), key=lambda row: -row[1])

    def _load_inputs(self, inputs) -> None:
        """Copy the inputs into their buffers and point the parameters' .grad at theirs."""
        if len(inputs) != len(self.inputs):
            raise ValueError(f"run: expected {len(self.inputs)} inputs, got {len(inputs)}")
        for index, (value, given) in enumerate(zip(self.inputs, inputs)):
            data = given.data if isinstance(given, Tensor) else given
            if not isinstance(data, np.ndarray):
                raise TypeError(f"run: input {index} must be a numpy array or Tensor, got {type(data).__name__}")
            if data.shape != value.spec.shape or data.dtype != value.spec.dtype:
                raise ValueError(f"run: input {index} has shape {data.shape} and dtype {data.dtype}, "
                                 f"the graph was captured for {value.spec.shape} {value.spec.dtype}")
            np.copyto(value.array, data)
        if (self._folds or self._transposes) and self._folded_at != O.PARAMETER_WRITES[0]:
            self.refold()
        for tensor, grad in self.params:
            tensor._grad = grad.array
        for tensor in self._untouched_params:
            tensor._grad = None
        if self._streams is not None:
            self._streams.begin_replay()

    def _check_step(self, index: int, step: Step) -> None:
        """NonFiniteError naming the step when one of its written buffers holds inf or NaN."""
        for value in step.writes():
            array = value.array
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                bad = int(array.size - np.isfinite(array).sum())
                reads = ", ".join(f"{v.name} {v.spec.shape}" for v in step.reads() if v is not None)
                raise NonFiniteError(f"step {index} ({step.kind} of {step.op.label()}) wrote {bad} non-finite "
                                     f"value(s) into {value.name} {value.spec.shape}; it read {reads}",
                                     index, step.op.label())

    # ---------------------------------------------------------------- inspecting
    def plan_text(self) -> str:
        """The schedule and the memory plan, one line per step and buffer."""
        lines = [f"graph: {len(self.steps)} steps, {len(self._planned_roots)} planned buffers, "
                 f"arena {self.arena_bytes} bytes for {self.planned_bytes} bytes of buffers "
                 f"({self.planned_bytes / max(self.arena_bytes, 1):.2f}x reuse)"]
        for index, step in enumerate(self.steps):
            target = step.outs if step.kind == "forward" else [g for g in step.grad_ins if g is not None]
            written = ", ".join(f"{v.name}{list(v.spec.shape)}" for v in target)
            read = ", ".join(v.name for v in step.reads())
            lines.append(f"{index:4d} {step.kind:8s} {step.op.label():20s} {read} -> {written}")
        lines.append("buffers (offset, bytes, name):")
        for value in sorted(self._planned_roots, key=lambda v: v.offset):
            lines.append(f"  {value.offset:10d} {value.spec.nbytes:10d} {value.name}")
        return "\n".join(lines)

    def to_dot(self) -> str:
        """The graph in Graphviz dot: ops as boxes, buffers as ellipses."""
        lines = ["digraph pyengine {", "  rankdir=TB;", '  node [fontname="Helvetica"];']
        used = set()
        for index, step in enumerate(self.steps):
            color = "lightblue" if step.kind == "forward" else "mistyrose"
            lines.append(f'  s{index} [shape=box, style=filled, fillcolor={color}, '
                         f'label="{step.op.label()} ({step.kind})"];')
            for value in step.reads():
                used.add(value)
                lines.append(f"  v{value.index} -> s{index};")
            for value in step.writes():
                used.add(value)
                lines.append(f"  s{index} -> v{value.index};")
        for value in sorted(used, key=lambda v: v.index):
            lines.append(f'  v{value.index} [label="{value.name}\\n{list(value.spec.shape)}"];')
        lines.append("}")
        return "\n".join(lines)


def machine_memory_bytes() -> int | None:
    """The machine's physical memory, where the platform says (None elsewhere)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _allocate_arena(nbytes: int) -> np.ndarray:
    """The arena, or a MemoryError giving the size before anything runs."""
    memory = machine_memory_bytes()
    if memory is not None and nbytes > memory:
        raise MemoryError(f"capture: the plan needs an arena of {nbytes} bytes ({nbytes / 2**30:.1f} GiB), "
                          f"more than this machine's {memory} bytes ({memory / 2**30:.1f} GiB) of memory")
    try:
        return np.empty(nbytes, dtype=np.uint8)
    except MemoryError:
        raise MemoryError(f"capture: cannot allocate the plan's arena of {nbytes} bytes "
                          f"({nbytes / 2**30:.1f} GiB)") from None


def _zeroer(array: np.ndarray):
    """A program call that zeroes a gradient buffer: the fill kernel, across the threads (a float32
    buffer in one piece), else numpy's single-threaded fill. Two threads store about twice as fast
    as one: GPT "tiny"'s step spent 6.7% of its time zeroing with numpy."""
    if array.dtype == np.float32 and array.flags.c_contiguous and array.size:
        return functools.partial(_C.fill, array.reshape(-1), 0.0)  # a view: one piece
    return functools.partial(array.fill, 0)
