"""The op registry as Python sees it: what the C++ declarations say, read once.

Every kernel is declared once, in C++ beside its kernel family
(``csrc/<family>/<family>_ops.cpp``): its arguments in the kernel's order with
their roles, dtypes and shapes, and its attributes with their defaults.
``_C.op_table()`` exports those declarations; this module turns them into

- the public wrappers of :mod:`pyengine.kernels` (generated Python source, so
  each has a real signature and a docstring made from the declaration);
- the facts :mod:`pyengine.ops` and the graph executor need: which forward
  value a backward reads, which gradient belongs to which input, the enums
  (``BinaryOp``, ``ScalarOp``, ``Activation``) by name.

Conventions the declarations follow, and the generated wrappers rely on:
``<base>_forward`` and ``<base>_backward`` form a pair; a backward names the
gradient of forward argument ``x`` as ``dx`` (role ``grad`` or
``optional_grad``, accumulated into) and the gradient flowing in as ``dy`` for
forward output ``y`` (role ``grad_input``); every other array a backward takes
is a forward input or output of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pyengine import _C

__all__ = ["OpInfo", "ops", "op", "pairs", "ENUMS", "generate_wrappers"]

ENUMS: dict = {name: dict(members) for name, members in _C.enums.items()}

WRITTEN = ("output", "optional_output", "grad", "optional_grad", "inout", "optional_inout")
READ = ("input", "optional_input", "grad_input", "inout", "optional_inout")


@dataclass(frozen=True)
class OpInfo:
    """One declared kernel."""

    name: str
    family: str
    doc: str
    args: tuple  # dicts: name, role, dtype, shape
    attrs: tuple  # dicts: name, kind, default, required, doc (and enum for codes)
    may_alias: tuple = ()  # (written, read) argument pairs that may be one array

    def names(self, *roles) -> list:
        return [a["name"] for a in self.args if a["role"] in roles]

    @cached_property
    def kernel(self):
        return getattr(_C, self.name)

    @property
    def inputs(self) -> list:
        """Forward inputs, in order (optional ones included)."""
        return self.names("input", "optional_input")

    @property
    def outputs(self) -> list:
        """Outputs the kernel always writes (allocated when not given)."""
        return self.names("output")

    def arg(self, name: str) -> dict:
        return next(a for a in self.args if a["name"] == name)


def _load() -> dict:
    table = {}
    for name, entry in _C.op_table().items():
        table[name] = OpInfo(name, entry["family"], entry["doc"], tuple(entry["args"]),
                             tuple(entry["attrs"]), tuple(tuple(pair) for pair in entry["may_alias"]))
    return table


ops: dict = _load()


def op(name: str) -> OpInfo:
    try:
        return ops[name]
    except KeyError:
        raise ValueError(f"no kernel named {name!r} is declared") from None


def pairs() -> dict:
    """base name -> (forward OpInfo, backward OpInfo or None)."""
    out = {}
    for name, info in ops.items():
        if name.endswith("_forward"):
            base = name[: -len("_forward")]
            out[base] = (info, ops.get(base + "_backward"))
    return out


# ---------------------------------------------------------------- backward plans


@dataclass(frozen=True)
class BackwardPlan:
    """How a backward kernel's arguments map onto a forward application.

    Each entry of `sources`, one per backward argument, is ("grad", i) for
    the gradient of forward input i, ("grad_out", 0) for the gradient flowing
    into output 0, ("input", i) or ("output", j) for a forward value.
    """

    sources: tuple
    saves: tuple  # forward values the backward reads: ("input", i) / ("output", j)


def backward_plan(forward: OpInfo, backward: OpInfo) -> BackwardPlan:
    inputs, outputs = forward.inputs, forward.outputs
    sources = []
    for a in backward.args:
        name, role = a["name"], a["role"]
        if role in ("grad", "optional_grad"):
            sources.append(("grad", inputs.index(name[1:])))
        elif role == "grad_input":
            if outputs.index(name[1:]) != 0:
                raise ValueError(f"{backward.name}: only output 0 is differentiated")
            sources.append(("grad_out", 0))
        elif name in inputs:
            sources.append(("input", inputs.index(name)))
        elif name in outputs:
            sources.append(("output", outputs.index(name)))
        else:
            raise ValueError(f"{backward.name}: argument {name!r} is not a value of {forward.name}")
    saves = tuple(s for s in sources if s[0] in ("input", "output"))
    return BackwardPlan(tuple(sources), saves)


# ---------------------------------------------------------------- wrappers


def _python_name(info: OpInfo) -> str:
    return info.name[: -len("_forward")] if info.name.endswith("_forward") else info.name


def _grad_target(name: str) -> str:
    """dx -> x: the forward value a gradient argument belongs to."""
    return name[1:]


def _literal(value) -> str:
    if isinstance(value, float) and not np.isfinite(value):
        return f"float({str(value)!r})"  # inf and nan have no literal
    return repr(value)


def _attr_doc(a: dict) -> str:
    default = "required" if a["required"] else f"default {a['default']!r}"
    kind = f"{a['enum']} name or code" if a.get("enum") else a["kind"]
    return f"    {a['name']} ({kind}, {default}): {a['doc']}"


def _arg_doc(a: dict) -> str:
    shape = f" {a['shape']}" if a["shape"] else ""
    return f"    {a['name']}{shape}: {a['role'].replace('_', ' ')}, {a['dtype']}"


def _docstring(info: OpInfo, returns: str) -> str:
    lines = [info.doc, "", f"Kernel: _C.{info.name}. Arguments, in the declaration's words:"]
    lines += [_arg_doc(a) for a in info.args]
    lines += [_attr_doc(a) for a in info.attrs]
    lines += ["", f"Returns {returns}."]
    return "\n".join(lines)


def _forward_source(info: OpInfo, py_name: str) -> tuple:
    """A forward wrapper: arrays positional (optional ones default None),
    attributes and outputs keyword-only; returns what the kernel returns."""
    required = [a["name"] for a in info.args if a["role"] in ("input", "inout")]
    optional = [a["name"] for a in info.args if a["role"] in ("optional_input", "optional_inout")]
    outputs = [a["name"] for a in info.args if a["role"] in ("output", "optional_output")]
    out_params = {name: ("out" if i == 0 else name) for i, name in enumerate(outputs)}
    params = required + [f"{n}=None" for n in optional] + ["*"]
    params += [f"{a['name']}" if a["required"] else f"{a['name']}={_literal(a['default'])}"
               for a in info.attrs]
    params += [f"{p}=None" for p in out_params.values()]
    call = [out_params.get(a["name"], a["name"]) for a in info.args] + [a["name"] for a in info.attrs]
    body = f"    return _C.{info.name}({', '.join(call)})"
    returned = info.outputs or info.names("inout")
    returns = (f"{returned[0]!r}" if len(returned) == 1
               else f"({', '.join(returned)})" if returned else "None")
    return f"def {py_name}({', '.join(params)}):\n    \"\"\"{{doc}}\"\"\"\n{body}\n", returns


def _backward_source(info: OpInfo, py_name: str, forward: OpInfo | None) -> tuple:
    """A backward wrapper: the incoming gradient and the saved values
    positional, attributes keyword-only, and for each input gradient
    ``grad_<x>=`` (an array to accumulate into) and, when optional,
    ``needs_<x>=``; returns the input gradients (one, or a tuple)."""
    grads = [a for a in info.args if a["role"] in ("grad", "optional_grad")]
    read = [a["name"] for a in info.args if a["role"] not in ("grad", "optional_grad")]
    param = {a["name"]: (f"grad_{a['name'][1:]}" if a["role"] == "grad_input" else a["name"])
             for a in info.args}
    optional_inputs = set(forward.names("optional_input")) if forward else set()
    params = [param[n] for n in read] + ["*"]
    params += [f"{a['name']}" if a["required"] else f"{a['name']}={_literal(a['default'])}"
               for a in info.attrs]
    lines, returned = [], []
    for a in grads:
        target = _grad_target(a["name"])
        buffer = f"grad_{target}"
        if a["role"] == "grad":
            params.append(f"{buffer}=None")
            need = "True"
        else:
            default = target not in optional_inputs
            params += [f"{buffer}=None", f"needs_{target}={default}"]
            need = f"needs_{target}"
        lines.append(f"    {buffer} = {buffer} if {buffer} is not None or not {need} else "
                     f"{_grad_zeros_source(info, a, param)}")
        returned.append(buffer)
    attr_kw = ", ".join(f"{a['name']!r}: {a['name']}" for a in info.attrs)
    given = ", ".join(f"{n!r}: _shape_of({param[n]})" for n in read)
    shapes = (f"    def _shapes():\n        return _C.infer_shapes({info.name!r}, {{{given}}}, "
              f"{{{attr_kw}}})\n")
    call = [f"grad_{_grad_target(a['name'])}" if a["role"] in ("grad", "optional_grad")
            else param[a["name"]] for a in info.args] + [a["name"] for a in info.attrs]
    lines.append(f"    _C.{info.name}({', '.join(call)})")
    result = returned[0] if len(returned) == 1 else f"({', '.join(returned)},)"
    lines.append(f"    return {result}")
    if not any("_shapes()" in line for line in lines):
        shapes = ""  # every gradient's shape is an argument's: no shape rule to ask
    source = (f"def {py_name}({', '.join(params)}):\n    \"\"\"{{doc}}\"\"\"\n" + shapes
              + "\n".join(lines) + "\n")
    returns = (f"the gradient {returned[0]}" if len(returned) == 1
               else f"({', '.join(returned)}), None where not asked")
    return source, returns


def _grad_zeros_source(info: OpInfo, grad: dict, param: dict) -> str:
    """Python source for a zeroed gradient buffer of the right shape: its
    forward value's when the backward reads it (dx -> x), else that of an
    argument the declaration gives the same shape ("(*)" of y for tanh's dx),
    else the declaration's shape rule (matmul's dbias)."""
    read = [a for a in info.args if a["role"] not in ("grad", "optional_grad")]
    for a in read:
        if a["name"] == _grad_target(grad["name"]):
            return _zeros_like_source(param[a["name"]])
    for a in read:
        if grad["shape"] and a["shape"] == grad["shape"]:
            return _zeros_like_source(param[a["name"]])
    return f"_zeros(_shapes()[{grad['name']!r}])"


def _zeros_like_source(name: str) -> str:
    # np.zeros of the argument's shape, written out (no Python-level call: ~0.1 us of an
    # allocating backward's ~0.9); not an array: an empty buffer, and the kernel names the argument.
    return f"_np_zeros({name}.shape if _isinstance({name}, _ndarray) else 0, _f32)"


def _shape_of(x):
    return x.shape if isinstance(x, np.ndarray) else None  # not np.shape: a Python-level call per kernel call


def _zeros(shape) -> np.ndarray:
    # No shape: the argument it comes from is not an array, which the kernel
    # reports (naming the op and the argument) before it looks at this buffer.
    return np.zeros(0 if shape is None else shape, dtype=np.float32)


def generate_wrappers(names=None) -> dict:
    """Python functions for the declared kernels: {python name: function}.

    A ``<base>_forward`` kernel becomes ``<base>``, anything else keeps its
    name. The functions are compiled from generated source, so each has the
    declaration's signature (see ``inspect.signature``) and docstring.
    """
    namespace = {"_C": _C, "_zeros": _zeros, "_shape_of": _shape_of, "_np_zeros": np.zeros, "_f32": np.float32,
                 "_isinstance": isinstance, "_ndarray": np.ndarray}
    functions = {}
    for name in names or ops:
        info = ops[name]
        py_name = _python_name(info)
        is_backward = name.endswith("_backward")
        forward = ops.get(name[: -len("_backward")] + "_forward") if is_backward else None
        source, returns = (_backward_source(info, py_name, forward) if is_backward
                           else _forward_source(info, py_name))
        exec(source.replace("{doc}", _docstring(info, returns).replace('"""', "'''")), namespace)
        function = namespace[py_name]
        function.__module__ = "pyengine.kernels"
        function.__source__ = source  # shown by pyengine.registry for readers
        functions[py_name] = function
    return functions
