// The Python boundary of the op registry (see registry.h): one place that
// checks an argument of each role, allocates missing outputs, releases the
// GIL for large work and calls the kernel; and the export of the
// declarations (op_table, enums, infer_shapes). Declarations and shape
// resolution are registry.cpp.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdio>
#include <cstring>
#include <deque>

#include "core/denormals.h"
#include "core/registry.h"

namespace pyengine {
namespace registry {
namespace {

constexpr int64_t kWorthReleasingGil = 1 << 16;  // elements or multiply-adds

}  // namespace

// ---------------------------------------------------------------- calls

const void* Call::data_by_name(const char* arg) const {
  const int i = r_.op().arg_index(arg);
  if (i < 0) throw std::logic_error(r_.op().name + ": no argument '" + arg + "'");
  return pointers_[i];
}

bool Call::is_int32(const char* arg) const {
  const int i = r_.op().arg_index(arg);
  return i >= 0 && int32_[i];
}

int64_t Call::dim(const char* name) const { return r_.dim(name); }

namespace {

[[noreturn]] void type_error(const OpDecl& op, const std::string& message) {
  throw py::type_error(op.name + ": " + message);
}

[[noreturn]] void value_error(const OpDecl& op, const std::string& message) {
  throw py::value_error(op.name + ": " + message);
}

constexpr int64_t kMaxEmptyDim = (int64_t{1} << 31) - 1;
constexpr int kNumpyFloat32 = 11;  // NPY_FLOAT: float32 in every numpy
// numpy's array flags (ndarraytypes.h); the same values in numpy 1 and 2.
constexpr int kCContiguous = 0x0001, kAligned = 0x0100, kWriteable = 0x0400;

bool native_byte_order(char order) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return order != '<';
#else
  return order != '>';
#endif
}

// What a call needs of one array argument, read once from numpy's struct.
struct ArrayView {
  char* data;
  int64_t size;    // elements
  int64_t nbytes;  // bytes spanned (C-contiguous)
  bool int32;      // an index array of int32
};

[[noreturn]] void reject_dtype(const OpDecl& op, const ArgDecl& arg, const py::array& a, const Shape& shape) {
  const py::dtype dtype = a.dtype();
  const char kind = dtype.kind();
  const py::ssize_t itemsize = dtype.itemsize();
  const bool right_type = arg.dtype == DType::f32 ? kind == 'f' && itemsize == 4
                                                 : kind == 'i' && (itemsize == 8 || itemsize == 4);
  if (!right_type)
    type_error(op, cat("argument '", arg.name, "' must have dtype ",
                       arg.dtype == DType::f32 ? "float32" : "int64 or int32", ", got ",
                       std::string(py::str(dtype)), " with shape ", shape_str(shape)));
  // A byte-swapped array has the right type number but other bytes: the kernel would read garbage.
  type_error(op, cat("argument '", arg.name, "' with shape ", shape_str(shape), " has dtype ",
                     std::string(py::str(dtype)), " in non-native byte order (use .astype(",
                     std::string(py::str(dtype)).substr(1), "))"));
}

// Checks one array argument of its role and fills its shape. The fields are
// read straight from numpy's structs (their layout is part of numpy's ABI):
// through pybind11's accessors, each read of a dtype took a new reference.
// (`view` is written in place: a returned struct was copied through memory, a
// store-forwarding stall that perf showed as the hottest instruction of a call.)
void check_array(const OpDecl& op, const ArgDecl& arg, PyObject* obj, Shape& shape, ArrayView& view) {
  if (!py::isinstance<py::array>(obj))
    type_error(op, cat("argument '", arg.name, "' must be a numpy.ndarray, got ", Py_TYPE(obj)->tp_name));
  const auto* fields = py::detail::array_proxy(obj);
  if (fields->nd < 0 || static_cast<size_t>(fields->nd) > kMaxRank)
    value_error(op, cat("'", arg.name, "' has ", fields->nd, " dims; at most ", kMaxRank, " are supported"));
  shape.use_first(0);
  int64_t size = 1;
  for (int i = 0; i < fields->nd; ++i) {
    shape.push_back(fields->dimensions[i]);
    size *= fields->dimensions[i];  // numpy keeps the product inside ssize_t
  }
  const auto* descr = py::detail::array_descriptor_proxy(fields->descr);
  // float32 has one type number (NPY_FLOAT); an index array is checked by kind and size instead,
  // numpy having two int64 type numbers (long, long long).
  const bool native = native_byte_order(descr->byteorder);
  int64_t itemsize = 4;
  bool int32 = false;
  if (arg.dtype == DType::f32) {
    if (descr->type_num != kNumpyFloat32 || !native)
      reject_dtype(op, arg, py::reinterpret_borrow<py::array>(obj), shape);
  } else {
    const py::array a = py::reinterpret_borrow<py::array>(obj);
    itemsize = a.itemsize();
    if (descr->kind != 'i' || (itemsize != 8 && itemsize != 4) || !native) reject_dtype(op, arg, a, shape);
    int32 = itemsize == 4;
  }
  if (!(fields->flags & kCContiguous))
    value_error(op, cat("argument '", arg.name, "' with shape ", shape_str(shape),
                        " must be C-contiguous (use numpy.ascontiguousarray)"));
  if (!(fields->flags & kAligned))  // an offset view of a byte buffer: vector loads would fault
    value_error(op, cat("argument '", arg.name, "' with shape ", shape_str(shape),
                        " is not aligned to its dtype (use numpy.ascontiguousarray or a copy)"));
  if (is_written(arg.role) && !(fields->flags & kWriteable))
    value_error(op, cat("output '", arg.name, "' with shape ", shape_str(shape), " is read-only"));
  // An empty array may still name huge dims ((0, 2^58) holds nothing): a kernel's loops over the
  // other dims would then spin through 2^58 empty iterations. Found by the fuzzing (a hang).
  if (size == 0)
    for (size_t d = 0; d < shape.size(); ++d)
      if (shape[d] > kMaxEmptyDim)
        value_error(op, cat("argument '", arg.name, "' with shape ", shape_str(shape),
                            " is empty but has a dimension above 2^31 - 1, which is not supported"));
  view.data = fields->data;
  view.size = size;
  view.nbytes = size * itemsize;
  view.int32 = int32;
}

int64_t as_int(const OpDecl& op, const AttrDecl& decl, const py::handle& obj) {
  if (PyBool_Check(obj.ptr()) || !(PyLong_Check(obj.ptr()) || PyIndex_Check(obj.ptr())) ||
      PyFloat_Check(obj.ptr()))
    type_error(op, cat("'", decl.name, "' must be an int, got ", Py_TYPE(obj.ptr())->tp_name));
  py::int_ value = py::reinterpret_steal<py::int_>(PyNumber_Index(obj.ptr()));
  if (!value) {
    PyErr_Clear();
    type_error(op, cat("'", decl.name, "' must be an int, got ", Py_TYPE(obj.ptr())->tp_name));
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  if (overflow) value_error(op, cat("'", decl.name, "' = ", std::string(py::repr(obj)), " is out of range"));
  return v;
}

Attr convert_attr(const OpDecl& op, const AttrDecl& decl, const py::handle& obj) {
  Attr a{decl.kind};
  switch (decl.kind) {
    case AttrKind::flag: {
      // A Python bool first: the type-name comparison for numpy's bool costs more than the rest.
      const bool is_np_bool = !PyBool_Check(obj.ptr()) && (std::strcmp(Py_TYPE(obj.ptr())->tp_name, "numpy.bool") == 0 ||
                                                           std::strcmp(Py_TYPE(obj.ptr())->tp_name, "numpy.bool_") == 0);
      if (!PyBool_Check(obj.ptr()) && !is_np_bool)
        type_error(op, cat("'", decl.name, "' must be a bool, got ", Py_TYPE(obj.ptr())->tp_name));
      a.flag = PyObject_IsTrue(obj.ptr()) == 1;
      return a;
    }
    case AttrKind::integer: a.integer = as_int(op, decl, obj); return a;
    case AttrKind::real: {
      if (PyBool_Check(obj.ptr()) || !PyNumber_Check(obj.ptr()))
        type_error(op, cat("'", decl.name, "' must be a number, got ", Py_TYPE(obj.ptr())->tp_name));
      a.real = PyFloat_AsDouble(obj.ptr());
      if (PyErr_Occurred()) {
        PyErr_Clear();
        type_error(op, cat("'", decl.name, "' must be a number, got ", Py_TYPE(obj.ptr())->tp_name));
      }
      return a;
    }
    case AttrKind::code: {
      const EnumDecl& values = *decl.values;
      if (PyUnicode_Check(obj.ptr())) {
        for (size_t i = 0; i < values.members.size(); ++i)  // no string is built on the way
          if (PyUnicode_CompareWithASCIIString(obj.ptr(), values.members[i].c_str()) == 0) {
            a.integer = static_cast<int64_t>(i);
            return a;
          }
        const std::string name = py::str(obj);
        std::string names;
        for (const std::string& m : values.members) names += (names.empty() ? "" : ", ") + m;
        value_error(op, cat("unknown ", decl.name, " '", name, "' (expected one of ", names, ")"));
      }
      a.integer = as_int(op, decl, obj);
      if (a.integer < 0 || a.integer >= static_cast<int64_t>(values.members.size()))
        value_error(op, cat("unknown ", decl.name, " code ", a.integer, " (", values.name, " has codes 0..",
                            values.members.size() - 1, ")"));
      return a;
    }
    case AttrKind::int_pair: {
      constexpr int64_t kMax = 2147483647;  // far inside int64 arithmetic
      const bool single = PyLong_Check(obj.ptr()) && !PyBool_Check(obj.ptr());
      const bool sequence = py::isinstance<py::tuple>(obj) || py::isinstance<py::list>(obj);
      if (!single && (!sequence || py::len(obj) != 2))
        type_error(op, cat("'", decl.name, "' must be an int or a pair (h, w) of ints, got ",
                           std::string(py::repr(obj))));
      for (size_t i = 0; i < 2; ++i) {
        py::handle item = single ? obj : py::handle(PySequence_Fast_GET_ITEM(
                                              py::reinterpret_steal<py::object>(PySequence_Fast(obj.ptr(), "")).ptr(), i));
        if (!PyLong_Check(item.ptr()) || PyBool_Check(item.ptr()))
          type_error(op, cat("'", decl.name, "' must be an int or a pair (h, w) of ints, got ",
                             std::string(py::repr(obj))));
        int overflow = 0;
        const long long v = PyLong_AsLongLongAndOverflow(item.ptr(), &overflow);
        if (overflow || v < decl.minimum || v > kMax)
          value_error(op, cat("'", decl.name, "' must be >= ", decl.minimum, " and <= ", kMax, ", got ",
                              std::string(py::repr(obj))));
        a.pair[i] = v;
      }
      return a;
    }
  }
  return a;
}

bool alias_allowed(const OpDecl& op, const std::string& a, const std::string& b) {
  for (const auto& [w, r] : op.may_alias)
    if ((w == a && r == b) || (w == b && r == a)) return true;  // only reached on an overlap
  return false;
}

// Gathers the call's arguments: positional first, then keywords by name.
// (Raw pointers, not py::handles: a table of those is zeroed whole on every call.)
struct Gathered {
  InlineVec<PyObject*, kMaxArgs> arrays;  // nullptr: not given
  InlineVec<PyObject*, kMaxAttrs> attrs;
};

// args[0, nargs) are positional; kwnames (a tuple, or null) names the
// values that follow them (CPython's vectorcall convention).
Gathered gather(const OpDecl& op, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  const size_t n_arrays = op.args.size(), n_attrs = op.attrs.size();
  if (static_cast<size_t>(nargs) > n_arrays + n_attrs)
    type_error(op, cat("takes at most ", n_arrays + n_attrs, " arguments, got ", nargs));
  Gathered g;
  g.arrays.resize(n_arrays, nullptr);  // not given
  g.attrs.resize(n_attrs, nullptr);
  for (Py_ssize_t i = 0; i < nargs; ++i) {
    if (static_cast<size_t>(i) < n_arrays) g.arrays[i] = args[i];
    else g.attrs[i - n_arrays] = args[i];
  }
  const Py_ssize_t n_kw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
  for (Py_ssize_t i = 0; i < n_kw; ++i) {
    const char* key = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, i));
    if (!key) throw py::error_already_set();
    const int a = op.arg_index(key), t = op.attr_index(key);
    if (a < 0 && t < 0) type_error(op, cat("unexpected argument '", key, "'"));
    PyObject*& slot = a >= 0 ? g.arrays[a] : g.attrs[t];
    if (slot) type_error(op, cat("argument '", key, "' given twice"));
    slot = args[nargs + i];
  }
  return g;
}

Resolution::Attrs convert_attrs(const OpDecl& op, const InlineVec<PyObject*, kMaxAttrs>& given) {
  Resolution::Attrs attrs;
  for (size_t i = 0; i < op.attrs.size(); ++i) {
    const AttrDecl& decl = op.attrs[i];
    if (!given[i]) {
      if (!decl.default_value) type_error(op, cat("missing argument '", decl.name, "'"));
      attrs.push_back(*decl.default_value);
    } else {
      attrs.push_back(convert_attr(op, decl, given[i]));
    }
  }
  return attrs;
}

// The arrays of one call: borrowed from the caller's arguments, or new
// outputs this call owns (a null pointer: an argument not given). Raw
// pointers, not py::objects: a table of those is zeroed on every call.
// Each item is written once by the call, in argument order, before it is read.
class CallArrays {
 public:
  CallArrays() = default;
  ~CallArrays() {
    for (uint32_t owned = owned_; owned; owned &= owned - 1) Py_DECREF(items_[__builtin_ctz(owned)]);
  }
  CallArrays(const CallArrays&) = delete;
  CallArrays& operator=(const CallArrays&) = delete;
  void borrow(size_t i, PyObject* o) { items_[i] = o; }
  void own(size_t i, py::object o) { items_[i] = o.release().ptr(), owned_ |= uint32_t{1} << i; }
  void absent(size_t i) { items_[i] = nullptr; }
  bool given(size_t i) const { return items_[i] != nullptr; }
  py::object get(size_t i) const { return py::reinterpret_borrow<py::object>(items_[i]); }

 private:
  std::array<PyObject*, kMaxArgs> items_;
  uint32_t owned_ = 0;  // bit i: items_[i] is this call's reference
};

// The work that decides the GIL release: the declared dims' product, or the largest array.
int64_t work_of(const OpDecl& op, const Resolution& r, int64_t largest_array) {
  if (op.work_dims.empty()) return largest_array;
  int64_t w = 1;  // saturates: dims that are huge beside a zero one must not overflow
  for (int d : op.work_dims)
    if (__builtin_mul_overflow(w, r.dim_at(d), &w)) return INT64_MAX;
  return w;
}

// A float32 output of shape `s`; MemoryError naming the op, the output and the bytes asked for
// when the size overflows the address space or the allocation fails.
py::object allocate_output(const OpDecl& op, const ArgDecl& arg, const Shape& s) {
  uint64_t bytes = sizeof(float);
  bool overflow = false;
  for (int64_t d : s) overflow |= d < 0 || __builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes);
  if (overflow || bytes > static_cast<uint64_t>(PTRDIFF_MAX)) {
    PyErr_Format(PyExc_MemoryError, "%s: cannot allocate output '%s' of shape %s: %s bytes, more than the "
                 "address space", op.name.c_str(), arg.name.c_str(), shape_str(s).c_str(),
                 overflow ? "over 2^64" : std::to_string(bytes).c_str());
    throw py::error_already_set();
  }
  try {
    return py::array_t<float>(std::vector<py::ssize_t>(s.begin(), s.end()));
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_MemoryError)) throw;
  }
  char gib[32];  // PyErr_Format has no %f
  std::snprintf(gib, sizeof gib, "%.1f", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  PyErr_Format(PyExc_MemoryError, "%s: cannot allocate output '%s' of shape %s: %llu bytes (%s GiB)",
               op.name.c_str(), arg.name.c_str(), shape_str(s).c_str(), static_cast<unsigned long long>(bytes), gib);
  throw py::error_already_set();
}

// A written argument may not share bytes with another one, unless the
// declaration allows that pair to be the very same array.
void check_overlaps(const OpDecl& op, const Resolution::Shapes& shapes,
                    const InlineVec<ArrayView, kMaxArgs>& views, const CallArrays& arrays) {
  const size_t n = views.size();
  for (uint32_t written = op.written_mask; written; written &= written - 1) {
    const size_t i = __builtin_ctz(written);
    if (!arrays.given(i) || views[i].nbytes == 0) continue;
    const char *begin = views[i].data, *end = begin + views[i].nbytes;
    for (size_t j = 0; j < n; ++j) {
      if (j == i || !arrays.given(j) || views[j].nbytes == 0) continue;
      const char *other = views[j].data, *other_end = other + views[j].nbytes;
      if (!(begin < other_end && other < end)) continue;
      if (begin == other && end == other_end && alias_allowed(op, op.args[i].name, op.args[j].name)) continue;
      value_error(op, cat("'", op.args[i].name, "' with shape ", shape_str(*shapes[i]), " overlaps '",
                          op.args[j].name, "'"));
    }
  }
}

py::object call_op(const OpDecl& op, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  const Gathered g = gather(op, args, nargs, kwnames);
  const size_t n = op.args.size();
  CallArrays arrays;
  InlineVec<ArrayView, kMaxArgs> views;
  views.use_first(n);  // read only where given
  Resolution::Shapes shapes;
  shapes.use_first(n);  // absent
  Call::Flags int32;
  int32.use_first(n);  // each written below
  Call::Pointers pointers;
  pointers.use_first(n);  // each written below
  int64_t largest = 0;  // elements of the largest array, the work of an op that declares none
  for (size_t i = 0; i < n; ++i) {
    const ArgDecl& arg = op.args[i];
    PyObject* obj = g.arrays[i];
    if (!obj || obj == Py_None) {
      if (!is_optional(arg.role) && arg.role != Role::output)
        type_error(op, cat("argument '", arg.name, "' must be a numpy.ndarray, got ", obj ? "NoneType" : "nothing"));
      arrays.absent(i);
      int32[i] = false;
      pointers[i] = nullptr;
      continue;
    }
    ArrayView& view = views[i];
    check_array(op, arg, obj, shapes[i].fill(), view);
    int32[i] = view.int32;
    pointers[i] = view.data;
    largest = std::max(largest, view.size);
    arrays.borrow(i, obj);
  }
  const Resolution::Attrs attrs = convert_attrs(op, g.attrs);
  Resolution r(op, shapes, attrs);
  r.resolve();
  // Outputs not given are allocated (never a copy of anything).
  for (size_t i = 0; i < n; ++i) {
    if (arrays.given(i) || op.args[i].role != Role::output) continue;
    if (!r.expected(i)) throw std::logic_error(op.name + ": no shape for output '" + op.args[i].name + "'");
    const Shape& s = *r.expected(i);
    py::object out = allocate_output(op, op.args[i], s);
    shapes[i].fill() = s;  // the kernel sees it like a given one; new, it needs no checks
    ArrayView& view = views[i];
    view.data = py::detail::array_proxy(out.ptr())->data;
    view.size = 1;
    for (int64_t d : s) view.size *= d;
    view.nbytes = view.size * static_cast<int64_t>(sizeof(float));
    view.int32 = false;
    pointers[i] = view.data;
    largest = std::max(largest, view.size);
    arrays.own(i, std::move(out));
  }
  check_overlaps(op, shapes, views, arrays);
  const Call call(r, pointers, int32);
  if (op.check) op.check(call);
  {
    std::optional<py::gil_scoped_release> release;
    if (work_of(op, r, largest) >= kWorthReleasingGil) release.emplace();
    const FlushDenormals flush;  // see core/denormals.h
    op.kernel(call);
  }
  if (op.returned.empty()) return py::none();
  if (op.returned.size() == 1) return arrays.get(op.returned[0]);
  py::tuple result(op.returned.size());
  for (size_t k = 0; k < op.returned.size(); ++k) result[k] = arrays.get(op.returned[k]);
  return result;
}

// infer_shapes(op, shapes, attrs): shapes maps argument names to tuples;
// returns every argument's expected shape that the given ones determine.
py::dict infer_shapes(const std::string& name, const py::dict& given_shapes, const py::dict& given_attrs) {
  const OpDecl* found = nullptr;
  for (const OpDecl& op : all_ops())
    if (op.name == name) found = &op;
  if (!found) throw py::value_error("infer_shapes: unknown op '" + name + "'");
  const OpDecl& op = *found;
  Resolution::Shapes shapes;
  shapes.resize(op.args.size());
  for (auto item : given_shapes) {
    const std::string key = py::str(item.first);
    const int a = op.arg_index(key.c_str());
    if (a < 0) type_error(op, cat("unexpected argument '", key, "'"));
    if (item.second.is_none()) continue;
    Shape s;
    for (auto d : item.second) s.push_back(d.cast<int64_t>());
    shapes[a] = s;
  }
  InlineVec<PyObject*, kMaxAttrs> attr_handles;
  attr_handles.resize(op.attrs.size(), nullptr);
  for (auto item : given_attrs) {
    const int t = op.attr_index(std::string(py::str(item.first)).c_str());
    if (t < 0) type_error(op, cat("unexpected argument '", std::string(py::str(item.first)), "'"));
    attr_handles[t] = item.second.ptr();  // borrowed: given_attrs holds it
  }
  const Resolution::Attrs attrs = convert_attrs(op, attr_handles);  // r keeps a reference: not a temporary
  Resolution r(op, shapes, attrs);
  r.resolve();
  py::dict out;
  for (size_t i = 0; i < op.args.size(); ++i)
    if (r.expected(i)) out[py::str(op.args[i].name)] = py::tuple(py::cast(std::vector<int64_t>(r.expected(i)->begin(), r.expected(i)->end())));
  return out;
}

py::object attr_value(const Attr& a, const AttrDecl& decl) {
  switch (a.kind) {
    case AttrKind::flag: return py::bool_(a.flag);
    case AttrKind::integer: return py::int_(a.integer);
    case AttrKind::real: return py::float_(a.real);
    case AttrKind::code: return py::str(decl.values->members[a.integer]);
    case AttrKind::int_pair: return py::make_tuple(a.pair[0], a.pair[1]);
  }
  return py::none();
}

const char* attr_kind_name(AttrKind k) {
  switch (k) {
    case AttrKind::flag: return "bool";
    case AttrKind::integer: return "int";
    case AttrKind::real: return "float";
    case AttrKind::code: return "code";
    case AttrKind::int_pair: return "int_pair";
  }
  return "unknown";
}

py::dict op_table() {
  py::dict table;
  for (const OpDecl& op : all_ops()) {
    py::list args, attrs;
    for (const ArgDecl& a : op.args)
      args.append(py::dict(py::arg("name") = a.name, py::arg("role") = role_name(a.role),
                           py::arg("dtype") = a.dtype == DType::f32 ? "float32" : "index",
                           py::arg("shape") = a.shape));
    for (const AttrDecl& a : op.attrs) {
      py::dict d(py::arg("name") = a.name, py::arg("kind") = attr_kind_name(a.kind), py::arg("doc") = a.doc,
                 py::arg("required") = !a.default_value.has_value());
      d["default"] = a.default_value ? attr_value(*a.default_value, a) : py::none();
      if (a.values) d["enum"] = a.values->name;
      attrs.append(d);
    }
    py::list may_alias;
    for (const auto& [w, r] : op.may_alias) may_alias.append(py::make_tuple(w, r));
    table[py::str(op.name)] = py::dict(py::arg("name") = op.name, py::arg("family") = op.family,
                                       py::arg("doc") = op.doc, py::arg("args") = args,
                                       py::arg("attrs") = attrs, py::arg("work") = op.work,
                                       py::arg("may_alias") = may_alias);
  }
  return table;
}

}  // namespace

// The entry point of every op: CPython's vectorcall convention straight
// into call_op (no argument tuple or dict is built), the op's declaration
// riding in the function's capsule. C++ exceptions become Python ones here.
PyObject* op_entry(PyObject* capsule, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  try {
    const auto* op = static_cast<const OpDecl*>(PyCapsule_GetPointer(capsule, nullptr));
    return call_op(*op, args, nargs, kwnames).release().ptr();
  } catch (py::error_already_set& e) {
    e.restore();
  } catch (py::builtin_exception& e) {
    e.set_error();
  } catch (const std::bad_alloc&) {
    PyErr_NoMemory();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  return nullptr;
}

void bind_registry(py::module_& m) {
  static std::deque<PyMethodDef> methods;  // CPython keeps pointers to them
  static std::deque<std::string> docs;
  for (const OpDecl& op : all_ops()) {
    std::string signature = op.name + "(";
    for (size_t i = 0; i < op.args.size(); ++i) signature += (i ? ", " : "") + op.args[i].name;
    for (const AttrDecl& a : op.attrs) signature += ", " + a.name;
    docs.push_back(signature + ")\n--\n\n" + op.doc);
    methods.push_back(PyMethodDef{op.name.c_str(), reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&op_entry)),
                                  METH_FASTCALL | METH_KEYWORDS, docs.back().c_str()});
    py::object self = py::reinterpret_steal<py::object>(
        PyCapsule_New(const_cast<void*>(static_cast<const void*>(&op)), nullptr, nullptr));
    if (!self) throw py::error_already_set();
    py::object function = py::reinterpret_steal<py::object>(PyCFunction_NewEx(&methods.back(), self.ptr(), m.attr("__name__").ptr()));
    if (!function) throw py::error_already_set();
    m.attr(op.name.c_str()) = function;
  }
  py::dict enums;
  for (const EnumDecl& e : all_enums()) {
    py::dict members;
    for (size_t i = 0; i < e.members.size(); ++i) members[py::str(e.members[i])] = i;
    enums[py::str(e.name)] = members;
  }
  m.attr("enums") = enums;
  m.def("op_table", &op_table, "Every declared op: arguments (name, role, dtype, shape), attributes, work.");
  m.def("infer_shapes", &infer_shapes, py::arg("op"), py::arg("shapes"), py::arg("attrs") = py::dict(),
        "Expected shapes of an op's arguments from the given ones (a shape rule written once).");
}

}  // namespace registry
}  // namespace pyengine
