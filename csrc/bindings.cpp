// The one binding layer between Python and the kernels. Every argument is
// checked here (type, dtype, contiguity, rank, shape, index range) before any
// pointer is touched; a bad call raises TypeError or ValueError naming the op
// and the shapes. Arrays are used in place: nothing is copied or cast.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/parallel.h"

namespace py = pybind11;
using pyengine::BinaryOp;
using pyengine::ScalarOp;
using Shape = std::vector<int64_t>;

namespace {

// ---------------------------------------------------------------- checking

std::string shape_str(const Shape& s) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < s.size(); ++i) out << (i ? ", " : "") << s[i];
  out << (s.size() == 1 ? ",)" : ")");
  return out.str();
}

Shape shape_of(const py::array& a) {
  return Shape(a.shape(), a.shape() + a.ndim());
}

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

template <typename... Parts>
[[noreturn]] void value_error(const char* op, Parts&&... parts) {
  std::ostringstream out;
  out << op << ": ";
  (out << ... << parts);
  throw py::value_error(out.str());
}

template <typename... Parts>
[[noreturn]] void type_error(const char* op, Parts&&... parts) {
  std::ostringstream out;
  out << op << ": ";
  (out << ... << parts);
  throw py::type_error(out.str());
}

// An argument checked to be a C-contiguous numpy array of dtype T.
template <typename T>
py::array checked(const char* op, const char* name, const py::object& obj, bool writable) {
  if (!py::isinstance<py::array>(obj))
    type_error(op, "argument '", name, "' must be a numpy.ndarray, got ",
               Py_TYPE(obj.ptr())->tp_name);
  py::array a = py::reinterpret_borrow<py::array>(obj);
  static const int wanted_type = py::dtype::of<T>().num();  // numpy's type number, looked up once
  if (a.dtype().num() != wanted_type)
    type_error(op, "argument '", name, "' must have dtype ", std::string(py::str(py::dtype::of<T>())),
               ", got ", std::string(py::str(a.dtype())), " with shape ", shape_str(shape_of(a)));
  if (!(a.flags() & py::array::c_style))
    value_error(op, "argument '", name, "' with shape ", shape_str(shape_of(a)),
                " must be C-contiguous (use numpy.ascontiguousarray)");
  if (writable && !a.writeable())
    value_error(op, "output '", name, "' with shape ", shape_str(shape_of(a)), " is read-only");
  return a;
}

py::array f32_in(const char* op, const char* name, const py::object& obj) {
  return checked<float>(op, name, obj, false);
}
py::array f32_out(const char* op, const char* name, const py::object& obj) {
  return checked<float>(op, name, obj, true);
}

const float* cptr(const py::array& a) { return static_cast<const float*>(a.data()); }
float* mptr(py::array& a) { return static_cast<float*>(a.mutable_data()); }
float* mptr_or_null(std::optional<py::array>& a) { return a ? mptr(*a) : nullptr; }

// Releases the GIL for the kernel when it has enough work to be worth the
// round trip through the interpreter's lock, so other Python threads run.
class GilRelease {
 public:
  explicit GilRelease(int64_t work) {
    if (work >= kWorthReleasing) release_.emplace();
  }

 private:
  static constexpr int64_t kWorthReleasing = 1 << 16;
  std::optional<py::gil_scoped_release> release_;
};

void expect_shape(const char* op, const char* name, const py::array& a, const Shape& want) {
  Shape got = shape_of(a);
  if (got != want)
    value_error(op, "'", name, "' has shape ", shape_str(got), ", expected ", shape_str(want));
}

void expect_rank_at_least(const char* op, const char* name, const py::array& a, int rank) {
  if (a.ndim() < rank)
    value_error(op, "'", name, "' must have at least ", rank, " dims, got shape ",
                shape_str(shape_of(a)));
}

bool overlaps(const py::array& x, const py::array& y) {
  const char* x0 = static_cast<const char*>(x.data());
  const char* y0 = static_cast<const char*>(y.data());
  return x.nbytes() && y.nbytes() && x0 < y0 + y.nbytes() && y0 < x0 + x.nbytes();
}

std::optional<py::array> optional_f32(const char* op, const char* name, const py::object& obj,
                                      bool writable) {
  if (obj.is_none()) return std::nullopt;
  return checked<float>(op, name, obj, writable);
}

// Rows and columns of a tensor normalized over its last axis.
std::pair<int64_t, int64_t> rows_cols(const char* op, const py::array& x) {
  expect_rank_at_least(op, "x", x, 1);
  const Shape s = shape_of(x);
  if (s.back() == 0) value_error(op, "the last dim of 'x' must be non-empty, got shape ", shape_str(s));
  return {numel(s) / s.back(), s.back()};
}

// ---------------------------------------------------------------- matmul

struct MatmulDims {
  int64_t batch, m, n, k, stride_a, stride_b;
  Shape c_shape;
};

MatmulDims matmul_dims(const char* op, const py::array& a, const py::array& b, bool trans_a,
                       bool trans_b) {
  expect_rank_at_least(op, "a", a, 2);
  expect_rank_at_least(op, "b", b, 2);
  const Shape sa = shape_of(a), sb = shape_of(b);
  const Shape batch_a(sa.begin(), sa.end() - 2), batch_b(sb.begin(), sb.end() - 2);
  if (!batch_a.empty() && !batch_b.empty() && batch_a != batch_b)
    value_error(op, "batch dims of a ", shape_str(sa), " and b ", shape_str(sb),
                " differ (one operand may be 2-D to share it across the batch)");
  MatmulDims d;
  d.m = trans_a ? sa[sa.size() - 1] : sa[sa.size() - 2];
  const int64_t ka = trans_a ? sa[sa.size() - 2] : sa[sa.size() - 1];
  const int64_t kb = trans_b ? sb[sb.size() - 1] : sb[sb.size() - 2];
  d.n = trans_b ? sb[sb.size() - 2] : sb[sb.size() - 1];
  if (ka != kb)
    value_error(op, "inner dims differ: a ", shape_str(sa), (trans_a ? " (transposed)" : ""),
                " and b ", shape_str(sb), (trans_b ? " (transposed)" : ""), " give k = ", ka,
                " vs ", kb);
  d.k = ka;
  const Shape& batch = batch_a.empty() ? batch_b : batch_a;
  d.batch = numel(batch);
  d.stride_a = batch_a.empty() ? 0 : d.m * d.k;
  d.stride_b = batch_b.empty() ? 0 : d.k * d.n;
  d.c_shape = batch;
  d.c_shape.push_back(d.m);
  d.c_shape.push_back(d.n);
  return d;
}

pyengine::Activation activation_from_name(const char* op, const std::string& name) {
  if (name == "none") return pyengine::Activation::none;
  if (name == "relu") return pyengine::Activation::relu;
  if (name == "gelu") return pyengine::Activation::gelu;
  value_error(op, "unknown activation '", name, "' (expected none, relu or gelu)");
}

void matmul_forward(py::object c_obj, py::object a_obj, py::object b_obj, py::object bias_obj,
                    bool trans_a, bool trans_b, const std::string& activation_name,
                    py::object preact_obj) {
  const char* op = "matmul_forward";
  py::array c = f32_out(op, "c", c_obj), a = f32_in(op, "a", a_obj), b = f32_in(op, "b", b_obj);
  auto bias = optional_f32(op, "bias", bias_obj, false);
  auto preact = optional_f32(op, "preact", preact_obj, true);
  const pyengine::Activation activation = activation_from_name(op, activation_name);
  MatmulDims d = matmul_dims(op, a, b, trans_a, trans_b);
  expect_shape(op, "c", c, d.c_shape);
  if (bias) expect_shape(op, "bias", *bias, {d.n});
  if (preact) expect_shape(op, "preact", *preact, d.c_shape);
  for (const py::array* out : {&c, preact ? &*preact : nullptr}) {
    if (!out) continue;
    if (overlaps(*out, a) || overlaps(*out, b) || (bias && overlaps(*out, *bias)) ||
        (preact && out == &c && overlaps(c, *preact)))
      value_error(op, "an output with shape ", shape_str(d.c_shape), " overlaps an input or the other output");
  }
  const float* bias_ptr = bias ? cptr(*bias) : nullptr;
  float* preact_ptr = mptr_or_null(preact);
  GilRelease release(d.batch * d.m * d.n * d.k);
  PYENGINE_DISPATCH(matmul_forward)(mptr(c), preact_ptr, cptr(a), cptr(b), bias_ptr, activation,
                                    d.batch, d.m, d.n, d.k, trans_a, trans_b, d.stride_a, d.stride_b);
}

int64_t fma_probe(int64_t iterations, int threads) {
  if (iterations < 0 || threads < 1)
    value_error("fma_probe", "iterations must be >= 0 and threads >= 1, got ", iterations, " and ", threads);
  std::vector<float> sink(static_cast<size_t>(threads), 0.0f);
  py::gil_scoped_release release;
  return PYENGINE_DISPATCH(fma_probe)(sink.data(), iterations, threads);
}

void matmul_backward(py::object da_obj, py::object db_obj, py::object dbias_obj, py::object dc_obj,
                     py::object a_obj, py::object b_obj, bool trans_a, bool trans_b) {
  const char* op = "matmul_backward";
  auto da = optional_f32(op, "da", da_obj, true);
  auto db = optional_f32(op, "db", db_obj, true);
  auto dbias = optional_f32(op, "dbias", dbias_obj, true);
  py::array dc = f32_in(op, "dc", dc_obj), a = f32_in(op, "a", a_obj), b = f32_in(op, "b", b_obj);
  MatmulDims d = matmul_dims(op, a, b, trans_a, trans_b);
  expect_shape(op, "dc", dc, d.c_shape);
  if (da) expect_shape(op, "da", *da, shape_of(a));
  if (db) expect_shape(op, "db", *db, shape_of(b));
  if (dbias) expect_shape(op, "dbias", *dbias, {d.n});
  for (auto* g : {&da, &db})
    if (*g && (overlaps(**g, dc) || overlaps(**g, a) || overlaps(**g, b)))
      value_error(op, "a gradient output overlaps an input");
  float *pda = mptr_or_null(da), *pdb = mptr_or_null(db), *pdbias = mptr_or_null(dbias);
  GilRelease release(d.batch * d.m * d.n * d.k);
  PYENGINE_DISPATCH(matmul_backward)(pda, pdb, pdbias, cptr(dc), cptr(a), cptr(b), d.batch, d.m,
                                     d.n, d.k, trans_a, trans_b, d.stride_a, d.stride_b);
}

// ---------------------------------------------------------------- broadcasting

// The broadcast iteration space of a and b over `out_shape`, with adjacent
// dims merged where both operands allow it (fewer, longer inner loops).
struct Broadcast {
  Shape shape, strides_a, strides_b;
};

Shape broadcast_shape(const char* op, const Shape& sa, const Shape& sb) {
  const size_t nd = std::max(sa.size(), sb.size());
  Shape out(nd);
  for (size_t i = 0; i < nd; ++i) {
    const int64_t da = i < nd - sa.size() ? 1 : sa[i - (nd - sa.size())];
    const int64_t db = i < nd - sb.size() ? 1 : sb[i - (nd - sb.size())];
    if (da != db && da != 1 && db != 1)
      value_error(op, "shapes ", shape_str(sa), " and ", shape_str(sb), " do not broadcast");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Shape broadcast_strides(const Shape& s, const Shape& out) {
  Shape strides(out.size(), 0);
  int64_t stride = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    const size_t src = s.size() - 1 - i, dst = out.size() - 1 - i;
    strides[dst] = s[src] == 1 ? 0 : stride;
    stride *= s[src];
  }
  return strides;
}

Broadcast plan_broadcast(const Shape& sa, const Shape& sb, const Shape& out) {
  const Shape fa = broadcast_strides(sa, out), fb = broadcast_strides(sb, out);
  Broadcast p;
  for (size_t d = 0; d < out.size(); ++d) {
    if (out[d] == 1) continue;  // size-1 dims do not move either operand
    const bool mergeable = !p.shape.empty() &&
                           p.strides_a.back() == fa[d] * out[d] &&
                           p.strides_b.back() == fb[d] * out[d];
    if (mergeable) {
      p.shape.back() *= out[d];
      p.strides_a.back() = fa[d];
      p.strides_b.back() = fb[d];
    } else {
      p.shape.push_back(out[d]);
      p.strides_a.push_back(fa[d]);
      p.strides_b.push_back(fb[d]);
    }
  }
  return p;
}

BinaryOp binary_op(const char* op, int code) {
  if (code < 0 || code > 3) value_error(op, "unknown binary op code ", code);
  return static_cast<BinaryOp>(code);
}

void binary_forward(py::object out_obj, py::object a_obj, py::object b_obj, int code) {
  const char* op = "binary_forward";
  py::array out = f32_out(op, "out", out_obj), a = f32_in(op, "a", a_obj), b = f32_in(op, "b", b_obj);
  const BinaryOp bop = binary_op(op, code);
  const Shape want = broadcast_shape(op, shape_of(a), shape_of(b));
  expect_shape(op, "out", out, want);
  Broadcast p = plan_broadcast(shape_of(a), shape_of(b), want);
  GilRelease release(out.size());
  PYENGINE_DISPATCH(binary_forward)(mptr(out), cptr(a), cptr(b), bop,
                                    static_cast<int64_t>(p.shape.size()), p.shape.data(),
                                    p.strides_a.data(), p.strides_b.data());
}

void binary_backward(py::object da_obj, py::object db_obj, py::object dout_obj, py::object a_obj,
                     py::object b_obj, int code) {
  const char* op = "binary_backward";
  auto da = optional_f32(op, "da", da_obj, true);
  auto db = optional_f32(op, "db", db_obj, true);
  py::array dout = f32_in(op, "dout", dout_obj), a = f32_in(op, "a", a_obj), b = f32_in(op, "b", b_obj);
  const BinaryOp bop = binary_op(op, code);
  const Shape want = broadcast_shape(op, shape_of(a), shape_of(b));
  expect_shape(op, "dout", dout, want);
  if (da) expect_shape(op, "da", *da, shape_of(a));
  if (db) expect_shape(op, "db", *db, shape_of(b));
  Broadcast p = plan_broadcast(shape_of(a), shape_of(b), want);
  float *pda = mptr_or_null(da), *pdb = mptr_or_null(db);
  GilRelease release(dout.size());
  PYENGINE_DISPATCH(binary_backward)(pda, pdb, cptr(dout), cptr(a), cptr(b), bop,
                                     static_cast<int64_t>(p.shape.size()), p.shape.data(),
                                     p.strides_a.data(), p.strides_b.data());
}

// ---------------------------------------------------------------- elementwise

ScalarOp scalar_op(const char* op, int code) {
  if (code < 0 || code > 6) value_error(op, "unknown scalar op code ", code);
  return static_cast<ScalarOp>(code);
}

void scalar_forward(py::object out_obj, py::object a_obj, int code, float s) {
  const char* op = "scalar_forward";
  py::array out = f32_out(op, "out", out_obj), a = f32_in(op, "a", a_obj);
  const ScalarOp sop = scalar_op(op, code);
  expect_shape(op, "out", out, shape_of(a));
  GilRelease release(a.size());
  PYENGINE_DISPATCH(scalar_forward)(mptr(out), cptr(a), sop, s, a.size());
}

void scalar_backward(py::object da_obj, py::object dout_obj, py::object a_obj, int code, float s) {
  const char* op = "scalar_backward";
  py::array da = f32_out(op, "da", da_obj), dout = f32_in(op, "dout", dout_obj),
            a = f32_in(op, "a", a_obj);
  const ScalarOp sop = scalar_op(op, code);
  expect_shape(op, "dout", dout, shape_of(a));
  expect_shape(op, "da", da, shape_of(a));
  GilRelease release(a.size());
  PYENGINE_DISPATCH(scalar_backward)(mptr(da), cptr(dout), cptr(a), sop, s, a.size());
}

using UnaryKernel = void (*)(float*, const float*, int64_t);
using UnaryGradKernel = void (*)(float*, const float*, const float*, int64_t);

// Binds <name>_forward(y, x) and <name>_backward(dx, dy, saved), where
// `saved` is x or y as the op needs (named in `saved_name`).
template <UnaryKernel (*Fwd)(), UnaryGradKernel (*Bwd)()>
void bind_unary(py::module_& m, const std::string& name, const char* saved_name) {
  const std::string fwd_name = name + "_forward", bwd_name = name + "_backward";
  m.def(fwd_name.c_str(), [fwd_name](py::object y_obj, py::object x_obj) {
      const char* op = fwd_name.c_str();
      py::array y = f32_out(op, "y", y_obj), x = f32_in(op, "x", x_obj);
      expect_shape(op, "y", y, shape_of(x));
      UnaryKernel k = Fwd();
      GilRelease release(x.size());
      k(mptr(y), cptr(x), x.size());
    }, py::arg("y"), py::arg("x"));
  m.def(bwd_name.c_str(), [bwd_name, saved_name](py::object dx_obj, py::object dy_obj, py::object s_obj) {
      const char* op = bwd_name.c_str();
      py::array dx = f32_out(op, "dx", dx_obj), dy = f32_in(op, "dy", dy_obj),
                saved = f32_in(op, saved_name, s_obj);
      expect_shape(op, "dy", dy, shape_of(saved));
      expect_shape(op, "dx", dx, shape_of(saved));
      UnaryGradKernel k = Bwd();
      GilRelease release(saved.size());
      k(mptr(dx), cptr(dy), cptr(saved), saved.size());
    }, py::arg("dx"), py::arg("dy"), py::arg(saved_name));
}

#define PYENGINE_UNARY_GETTERS(name)                                                     \
  UnaryKernel name##_fwd() { return PYENGINE_DISPATCH(name##_forward); }                 \
  UnaryGradKernel name##_bwd() { return PYENGINE_DISPATCH(name##_backward); }
PYENGINE_UNARY_GETTERS(relu)
PYENGINE_UNARY_GETTERS(gelu)
PYENGINE_UNARY_GETTERS(tanh)
PYENGINE_UNARY_GETTERS(exp)
#undef PYENGINE_UNARY_GETTERS

// ---------------------------------------------------------------- reductions

struct ReduceDims {
  int64_t outer, reduce, inner;
};

// Sum over the contiguous axes [begin, end) of x. `out` must have x's shape
// with those axes removed, or kept with size 1.
ReduceDims reduce_dims(const char* op, const py::array& x, const py::array& out, int64_t begin,
                       int64_t end) {
  const Shape s = shape_of(x);
  const int64_t nd = static_cast<int64_t>(s.size());
  if (begin < 0 || end > nd || begin > end)
    value_error(op, "axes [", begin, ", ", end, ") out of range for shape ", shape_str(s));
  ReduceDims d{1, 1, 1};
  Shape dropped, kept;
  for (int64_t i = 0; i < nd; ++i) {
    if (i < begin) d.outer *= s[i];
    else if (i < end) d.reduce *= s[i];
    else d.inner *= s[i];
    if (i < begin || i >= end) dropped.push_back(s[i]);
    kept.push_back(i < begin || i >= end ? s[i] : 1);
  }
  const Shape got = shape_of(out);
  if (got != dropped && got != kept)
    value_error(op, "'out' has shape ", shape_str(got), ", expected ", shape_str(dropped), " or ",
                shape_str(kept), " for axes [", begin, ", ", end, ") of ", shape_str(s));
  return d;
}

void sum_forward(py::object out_obj, py::object x_obj, int64_t begin, int64_t end, float scale) {
  const char* op = "sum_forward";
  py::array out = f32_out(op, "out", out_obj), x = f32_in(op, "x", x_obj);
  ReduceDims d = reduce_dims(op, x, out, begin, end);
  GilRelease release(x.size());
  PYENGINE_DISPATCH(sum_forward)(mptr(out), cptr(x), d.outer, d.reduce, d.inner, scale);
}

void sum_backward(py::object dx_obj, py::object dout_obj, int64_t begin, int64_t end, float scale) {
  const char* op = "sum_backward";
  py::array dx = f32_out(op, "dx", dx_obj), dout = f32_in(op, "dout", dout_obj);
  ReduceDims d = reduce_dims(op, dx, dout, begin, end);
  GilRelease release(dx.size());
  PYENGINE_DISPATCH(sum_backward)(mptr(dx), cptr(dout), d.outer, d.reduce, d.inner, scale);
}

// ---------------------------------------------------------------- softmax

using RowKernel = void (*)(float*, const float*, int64_t, int64_t);
using RowGradKernel = void (*)(float*, const float*, const float*, int64_t, int64_t);

void row_forward(const char* op, RowKernel k, py::object y_obj, py::object x_obj) {
  py::array y = f32_out(op, "y", y_obj), x = f32_in(op, "x", x_obj);
  auto [rows, cols] = rows_cols(op, x);
  expect_shape(op, "y", y, shape_of(x));
  GilRelease release(x.size());
  k(mptr(y), cptr(x), rows, cols);
}

void row_backward(const char* op, RowGradKernel k, py::object dx_obj, py::object dy_obj,
                  py::object y_obj) {
  py::array dx = f32_out(op, "dx", dx_obj), dy = f32_in(op, "dy", dy_obj), y = f32_in(op, "y", y_obj);
  auto [rows, cols] = rows_cols(op, y);
  expect_shape(op, "dy", dy, shape_of(y));
  expect_shape(op, "dx", dx, shape_of(y));
  GilRelease release(y.size());
  k(mptr(dx), cptr(dy), cptr(y), rows, cols);
}

// ---------------------------------------------------------------- layer norm

void layernorm_forward(py::object y_obj, py::object mean_obj, py::object rstd_obj, py::object x_obj,
                       py::object w_obj, py::object b_obj, float eps) {
  const char* op = "layernorm_forward";
  py::array y = f32_out(op, "y", y_obj), mean = f32_out(op, "mean", mean_obj),
            rstd = f32_out(op, "rstd", rstd_obj), x = f32_in(op, "x", x_obj),
            w = f32_in(op, "weight", w_obj), b = f32_in(op, "bias", b_obj);
  auto [rows, cols] = rows_cols(op, x);
  const Shape sx = shape_of(x);
  const Shape row_shape(sx.begin(), sx.end() - 1);
  expect_shape(op, "y", y, sx);
  expect_shape(op, "mean", mean, row_shape);
  expect_shape(op, "rstd", rstd, row_shape);
  expect_shape(op, "weight", w, {cols});
  expect_shape(op, "bias", b, {cols});
  if (!(eps >= 0.0f)) value_error(op, "eps must be >= 0, got ", eps);
  GilRelease release(x.size());
  PYENGINE_DISPATCH(layernorm_forward)(mptr(y), mptr(mean), mptr(rstd), cptr(x), cptr(w), cptr(b),
                                       rows, cols, eps);
}

void layernorm_backward(py::object dx_obj, py::object dw_obj, py::object db_obj, py::object dy_obj,
                        py::object x_obj, py::object w_obj, py::object mean_obj,
                        py::object rstd_obj) {
  const char* op = "layernorm_backward";
  auto dx = optional_f32(op, "dx", dx_obj, true);
  auto dw = optional_f32(op, "dweight", dw_obj, true);
  auto db = optional_f32(op, "dbias", db_obj, true);
  py::array dy = f32_in(op, "dy", dy_obj), x = f32_in(op, "x", x_obj), w = f32_in(op, "weight", w_obj),
            mean = f32_in(op, "mean", mean_obj), rstd = f32_in(op, "rstd", rstd_obj);
  auto [rows, cols] = rows_cols(op, x);
  const Shape sx = shape_of(x);
  const Shape row_shape(sx.begin(), sx.end() - 1);
  expect_shape(op, "dy", dy, sx);
  if (dx) expect_shape(op, "dx", *dx, sx);
  if (dw) expect_shape(op, "dweight", *dw, {cols});
  if (db) expect_shape(op, "dbias", *db, {cols});
  expect_shape(op, "weight", w, {cols});
  expect_shape(op, "mean", mean, row_shape);
  expect_shape(op, "rstd", rstd, row_shape);
  float *pdx = mptr_or_null(dx), *pdw = mptr_or_null(dw), *pdb = mptr_or_null(db);
  GilRelease release(x.size());
  PYENGINE_DISPATCH(layernorm_backward)(pdx, pdw, pdb, cptr(dy), cptr(x), cptr(w), cptr(mean),
                                        cptr(rstd), rows, cols);
}

// ---------------------------------------------------------------- convolution

// Stride, padding and dilation are capped well inside int64 arithmetic.
constexpr int64_t kMaxConvParam = 2147483647;

// A pair (h, w) of Python ints, each in [minimum, kMaxConvParam].
std::array<int64_t, 2> int_pair(const char* op, const char* name, const py::object& obj,
                                int64_t minimum) {
  const bool sequence = py::isinstance<py::tuple>(obj) || py::isinstance<py::list>(obj);
  if (!sequence || py::len(obj) != 2)
    type_error(op, "'", name, "' must be a pair (h, w) of ints, got ", std::string(py::repr(obj)));
  std::array<int64_t, 2> out{};
  for (size_t i = 0; i < 2; ++i) {
    py::object item = py::reinterpret_borrow<py::sequence>(obj)[i];
    if (!PyLong_Check(item.ptr()) || PyBool_Check(item.ptr()))
      type_error(op, "'", name, "' must be a pair (h, w) of ints, got ", std::string(py::repr(obj)));
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(item.ptr(), &overflow);
    if (overflow || v < minimum || v > kMaxConvParam)
      value_error(op, "'", name, "' must be >= ", minimum, " and <= ", kMaxConvParam, ", got ",
                  std::string(py::repr(obj)));
    out[i] = v;
  }
  return out;
}

struct ConvDims {
  int64_t N, C, H, W, K, R, S;
  std::array<int64_t, 2> stride, padding, dilation;
  Shape y_shape;
};

// x (N, C, H, W) and weight (K, C, R, S); y is (N, K, OH, OW) with
// OH = (H + 2 pad - dilation (R - 1) - 1) / stride + 1, which must be >= 1 (OW alike).
ConvDims conv_dims(const char* op, const py::array& x, const py::array& w, const py::object& stride,
                   const py::object& padding, const py::object& dilation) {
  const Shape sx = shape_of(x), sw = shape_of(w);
  if (x.ndim() != 4) value_error(op, "'x' must be 4-D (N, C, H, W), got shape ", shape_str(sx));
  if (w.ndim() != 4) value_error(op, "'weight' must be 4-D (K, C, R, S), got shape ", shape_str(sw));
  ConvDims d{sx[0], sx[1], sx[2], sx[3], sw[0], sw[2], sw[3], {}, {}, {}, {}};
  d.stride = int_pair(op, "stride", stride, 1);
  d.padding = int_pair(op, "padding", padding, 0);
  d.dilation = int_pair(op, "dilation", dilation, 1);
  if (sw[1] != d.C)
    value_error(op, "x ", shape_str(sx), " has ", d.C, " channels but weight ", shape_str(sw),
                " expects ", sw[1]);
  if (d.C == 0 || d.H == 0 || d.W == 0 || d.K == 0 || d.R == 0 || d.S == 0)
    value_error(op, "empty dims in x ", shape_str(sx), " or weight ", shape_str(sw),
                " (only N may be 0)");
  int64_t out[2];
  const int64_t in[2] = {d.H, d.W}, kernel[2] = {d.R, d.S};
  for (int i = 0; i < 2; ++i) {  // in 128 bits: a large dilation times a large kernel
    const __int128 extent = static_cast<__int128>(d.dilation[i]) * (kernel[i] - 1) + 1;
    const __int128 room = static_cast<__int128>(in[i]) + 2 * d.padding[i] - extent;
    out[i] = room < 0 ? 0 : static_cast<int64_t>(room / d.stride[i] + 1);
  }
  if (out[0] < 1 || out[1] < 1)
    value_error(op, "weight ", shape_str(sw), " with dilation ", shape_str({d.dilation[0], d.dilation[1]}),
                " does not fit x ", shape_str(sx), " with padding ",
                shape_str({d.padding[0], d.padding[1]}), ": no output");
  d.y_shape = {d.N, d.K, out[0], out[1]};
  return d;
}

void conv2d_forward(py::object y_obj, py::object x_obj, py::object w_obj, py::object bias_obj,
                    py::object stride, py::object padding, py::object dilation) {
  const char* op = "conv2d_forward";
  py::array y = f32_out(op, "y", y_obj), x = f32_in(op, "x", x_obj), w = f32_in(op, "weight", w_obj);
  auto bias = optional_f32(op, "bias", bias_obj, false);
  const ConvDims d = conv_dims(op, x, w, stride, padding, dilation);
  expect_shape(op, "y", y, d.y_shape);
  if (bias) expect_shape(op, "bias", *bias, {d.K});
  if (overlaps(y, x) || overlaps(y, w) || (bias && overlaps(y, *bias)))
    value_error(op, "the output y ", shape_str(d.y_shape), " overlaps an input");
  const float* bias_ptr = bias ? cptr(*bias) : nullptr;
  GilRelease release(y.size() * d.C * d.R * d.S);
  PYENGINE_DISPATCH(conv2d_forward)(mptr(y), cptr(x), cptr(w), bias_ptr, d.N, d.C, d.H, d.W, d.K,
                                    d.R, d.S, d.stride[0], d.stride[1], d.padding[0],
                                    d.padding[1], d.dilation[0], d.dilation[1]);
}

void conv2d_backward(py::object dx_obj, py::object dw_obj, py::object dbias_obj, py::object dy_obj,
                     py::object x_obj, py::object w_obj, py::object stride, py::object padding,
                     py::object dilation) {
  const char* op = "conv2d_backward";
  auto dx = optional_f32(op, "dx", dx_obj, true);
  auto dw = optional_f32(op, "dweight", dw_obj, true);
  auto dbias = optional_f32(op, "dbias", dbias_obj, true);
  py::array dy = f32_in(op, "dy", dy_obj), x = f32_in(op, "x", x_obj), w = f32_in(op, "weight", w_obj);
  const ConvDims d = conv_dims(op, x, w, stride, padding, dilation);
  expect_shape(op, "dy", dy, d.y_shape);
  if (dx) expect_shape(op, "dx", *dx, shape_of(x));
  if (dw) expect_shape(op, "dweight", *dw, shape_of(w));
  if (dbias) expect_shape(op, "dbias", *dbias, {d.K});
  const std::optional<py::array>* grads[] = {&dx, &dw, &dbias};
  for (size_t i = 0; i < 3; ++i) {
    if (!*grads[i]) continue;
    const py::array& g = **grads[i];
    bool clash = overlaps(g, dy) || overlaps(g, x) || overlaps(g, w);
    for (size_t j = i + 1; j < 3; ++j) clash = clash || (*grads[j] && overlaps(g, **grads[j]));
    if (clash)
      value_error(op, "the gradient with shape ", shape_str(shape_of(g)),
                  " overlaps an input or another gradient");
  }
  float *pdx = mptr_or_null(dx), *pdw = mptr_or_null(dw), *pdbias = mptr_or_null(dbias);
  GilRelease release(dy.size() * d.C * d.R * d.S);
  PYENGINE_DISPATCH(conv2d_backward)(pdx, pdw, pdbias, cptr(dy), cptr(x), cptr(w), d.N, d.C, d.H,
                                     d.W, d.K, d.R, d.S, d.stride[0], d.stride[1], d.padding[0],
                                     d.padding[1], d.dilation[0], d.dilation[1]);
}

// ---------------------------------------------------------------- cross-entropy

// Checks logits (rows, classes) and target (rows,) of int64 or int32, and
// that every target is a class index or ignore_index.
template <typename Index>
void check_targets(const char* op, const py::array& target, int64_t classes, int64_t ignore_index) {
  const Index* t = static_cast<const Index*>(target.data());
  for (int64_t r = 0; r < target.size(); ++r) {
    const int64_t v = t[r];
    if (v != ignore_index && (v < 0 || v >= classes))
      value_error(op, "target[", r, "] = ", v, " is out of range for ", classes,
                  " classes (ignore_index = ", ignore_index, ")");
  }
}

struct CrossEntropyArgs {
  py::array logits, target;
  int64_t rows, classes;
  bool int32;
};

CrossEntropyArgs cross_entropy_args(const char* op, const py::object& logits_obj,
                                    const py::object& target_obj, int64_t ignore_index) {
  CrossEntropyArgs args;
  args.logits = f32_in(op, "logits", logits_obj);
  if (args.logits.ndim() != 2)
    value_error(op, "'logits' must be 2-D (rows, classes), got shape ", shape_str(shape_of(args.logits)));
  args.rows = args.logits.shape(0);
  args.classes = args.logits.shape(1);
  if (args.classes == 0) value_error(op, "'logits' has no classes: shape ", shape_str(shape_of(args.logits)));
  if (!py::isinstance<py::array>(target_obj))
    type_error(op, "argument 'target' must be a numpy.ndarray");
  py::array t = py::reinterpret_borrow<py::array>(target_obj);
  args.int32 = t.dtype().is(py::dtype::of<int32_t>());
  if (!args.int32 && !t.dtype().is(py::dtype::of<int64_t>()))
    type_error(op, "'target' must have dtype int64 or int32, got ", std::string(py::str(t.dtype())));
  args.target = args.int32 ? checked<int32_t>(op, "target", target_obj, false)
                           : checked<int64_t>(op, "target", target_obj, false);
  expect_shape(op, "target", args.target, {args.rows});
  if (args.int32) check_targets<int32_t>(op, args.target, args.classes, ignore_index);
  else check_targets<int64_t>(op, args.target, args.classes, ignore_index);
  return args;
}

void cross_entropy_forward(py::object loss_obj, py::object logits_obj, py::object target_obj,
                           int64_t ignore_index) {
  const char* op = "cross_entropy_forward";
  py::array loss = f32_out(op, "loss", loss_obj);
  expect_shape(op, "loss", loss, {});
  CrossEntropyArgs a = cross_entropy_args(op, logits_obj, target_obj, ignore_index);
  using Fwd32 = void (*)(float*, const float*, const int32_t*, int64_t, int64_t, int64_t);
  using Fwd64 = void (*)(float*, const float*, const int64_t*, int64_t, int64_t, int64_t);
  const float* logits = cptr(a.logits);
  const void* target = a.target.data();
  GilRelease release(a.rows * a.classes);
  if (a.int32)
    PYENGINE_DISPATCH_AS(Fwd32, cross_entropy_forward)(
        mptr(loss), logits, static_cast<const int32_t*>(target), a.rows, a.classes, ignore_index);
  else
    PYENGINE_DISPATCH_AS(Fwd64, cross_entropy_forward)(
        mptr(loss), logits, static_cast<const int64_t*>(target), a.rows, a.classes, ignore_index);
}

void cross_entropy_backward(py::object dlogits_obj, py::object dloss_obj, py::object logits_obj,
                            py::object target_obj, int64_t ignore_index) {
  const char* op = "cross_entropy_backward";
  py::array dlogits = f32_out(op, "dlogits", dlogits_obj), dloss = f32_in(op, "dloss", dloss_obj);
  expect_shape(op, "dloss", dloss, {});
  CrossEntropyArgs a = cross_entropy_args(op, logits_obj, target_obj, ignore_index);
  expect_shape(op, "dlogits", dlogits, shape_of(a.logits));
  using Bwd32 = void (*)(float*, const float*, const float*, const int32_t*, int64_t, int64_t, int64_t);
  using Bwd64 = void (*)(float*, const float*, const float*, const int64_t*, int64_t, int64_t, int64_t);
  const float* logits = cptr(a.logits);
  const void* target = a.target.data();
  GilRelease release(a.rows * a.classes);
  if (a.int32)
    PYENGINE_DISPATCH_AS(Bwd32, cross_entropy_backward)(mptr(dlogits), cptr(dloss), logits,
                                                        static_cast<const int32_t*>(target),
                                                        a.rows, a.classes, ignore_index);
  else
    PYENGINE_DISPATCH_AS(Bwd64, cross_entropy_backward)(mptr(dlogits), cptr(dloss), logits,
                                                        static_cast<const int64_t*>(target),
                                                        a.rows, a.classes, ignore_index);
}

// ---------------------------------------------------------------- optimizers

void sgd_update(py::object param_obj, py::object buf_obj, py::object grad_obj, float lr,
                float momentum, float dampening, float weight_decay, bool nesterov,
                bool first_step) {
  const char* op = "sgd_update";
  py::array param = f32_out(op, "param", param_obj), grad = f32_in(op, "grad", grad_obj);
  auto buf = optional_f32(op, "momentum_buffer", buf_obj, true);
  expect_shape(op, "grad", grad, shape_of(param));
  if (momentum != 0.0f && !buf) value_error(op, "momentum = ", momentum, " needs a momentum_buffer");
  if (buf) expect_shape(op, "momentum_buffer", *buf, shape_of(param));
  if (nesterov && (momentum <= 0.0f || dampening != 0.0f))
    value_error(op, "nesterov needs momentum > 0 and dampening = 0");
  float* pbuf = momentum != 0.0f ? mptr_or_null(buf) : nullptr;
  GilRelease release(param.size());
  PYENGINE_DISPATCH(sgd_update)(mptr(param), pbuf, cptr(grad), param.size(), lr, momentum,
                                dampening, weight_decay, nesterov, first_step);
}

// ---------------------------------------------------------------- runtime

void set_num_threads(int n) {
  if (n < 1) throw py::value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
  pyengine::set_thread_count(n);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyengine's compiled kernels (private: use pyengine.kernels)";
  const auto none = py::none();

  m.def("matmul_forward", &matmul_forward, py::arg("c"), py::arg("a"), py::arg("b"),
        py::arg("bias") = none, py::arg("trans_a") = false, py::arg("trans_b") = false,
        py::arg("activation") = "none", py::arg("preact") = none);
  m.def("fma_probe", &fma_probe, py::arg("iterations"), py::arg("threads") = 1,
        "Register-only FMA loop on `threads` threads; returns the flops done (time it to get the peak).");
  m.def("matmul_backward", &matmul_backward, py::arg("da"), py::arg("db"), py::arg("dbias"),
        py::arg("dc"), py::arg("a"), py::arg("b"), py::arg("trans_a") = false,
        py::arg("trans_b") = false);
  m.def("binary_forward", &binary_forward, py::arg("out"), py::arg("a"), py::arg("b"), py::arg("op"));
  m.def("binary_backward", &binary_backward, py::arg("da"), py::arg("db"), py::arg("dout"),
        py::arg("a"), py::arg("b"), py::arg("op"));
  m.def("scalar_forward", &scalar_forward, py::arg("out"), py::arg("a"), py::arg("op"), py::arg("s"));
  m.def("scalar_backward", &scalar_backward, py::arg("da"), py::arg("dout"), py::arg("a"),
        py::arg("op"), py::arg("s"));
  bind_unary<relu_fwd, relu_bwd>(m, "relu", "x");
  bind_unary<gelu_fwd, gelu_bwd>(m, "gelu", "x");
  bind_unary<tanh_fwd, tanh_bwd>(m, "tanh", "y");
  bind_unary<exp_fwd, exp_bwd>(m, "exp", "y");
  m.def("sum_forward", &sum_forward, py::arg("out"), py::arg("x"), py::arg("axis_begin"),
        py::arg("axis_end"), py::arg("scale") = 1.0f);
  m.def("sum_backward", &sum_backward, py::arg("dx"), py::arg("dout"), py::arg("axis_begin"),
        py::arg("axis_end"), py::arg("scale") = 1.0f);
  m.def("softmax_forward", [](py::object y, py::object x) {
      row_forward("softmax_forward", PYENGINE_DISPATCH(softmax_forward), y, x);
    }, py::arg("y"), py::arg("x"));
  m.def("softmax_backward", [](py::object dx, py::object dy, py::object y) {
      row_backward("softmax_backward", PYENGINE_DISPATCH(softmax_backward), dx, dy, y);
    }, py::arg("dx"), py::arg("dy"), py::arg("y"));
  m.def("log_softmax_forward", [](py::object y, py::object x) {
      row_forward("log_softmax_forward", PYENGINE_DISPATCH(log_softmax_forward), y, x);
    }, py::arg("y"), py::arg("x"));
  m.def("log_softmax_backward", [](py::object dx, py::object dy, py::object y) {
      row_backward("log_softmax_backward", PYENGINE_DISPATCH(log_softmax_backward), dx, dy, y);
    }, py::arg("dx"), py::arg("dy"), py::arg("y"));
  m.def("layernorm_forward", &layernorm_forward, py::arg("y"), py::arg("mean"), py::arg("rstd"),
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"));
  m.def("layernorm_backward", &layernorm_backward, py::arg("dx"), py::arg("dweight"),
        py::arg("dbias"), py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("mean"),
        py::arg("rstd"));
  m.def("conv2d_forward", &conv2d_forward, py::arg("y"), py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("stride"), py::arg("padding"), py::arg("dilation"));
  m.def("conv2d_backward", &conv2d_backward, py::arg("dx"), py::arg("dweight"), py::arg("dbias"),
        py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("stride"), py::arg("padding"),
        py::arg("dilation"));
  m.def("cross_entropy_forward", &cross_entropy_forward, py::arg("loss"), py::arg("logits"),
        py::arg("target"), py::arg("ignore_index") = -100);
  m.def("cross_entropy_backward", &cross_entropy_backward, py::arg("dlogits"), py::arg("dloss"),
        py::arg("logits"), py::arg("target"), py::arg("ignore_index") = -100);
  m.def("sgd_update", &sgd_update, py::arg("param"), py::arg("momentum_buffer"), py::arg("grad"),
        py::arg("lr"), py::arg("momentum") = 0.0f, py::arg("dampening") = 0.0f,
        py::arg("weight_decay") = 0.0f, py::arg("nesterov") = false, py::arg("first_step") = false);

  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &pyengine::thread_count);
#ifdef _OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
  m.attr("has_cuda") = false;
  m.def("get_isa", [] { return std::string(pyengine::isa_name(pyengine::active_isa())); });
  m.def("best_isa", [] { return std::string(pyengine::isa_name(pyengine::best_supported_isa())); });
  m.def("available_isas", [] {
    std::vector<std::string> names;
    for (auto level : pyengine::available_isas()) names.push_back(pyengine::isa_name(level));
    return names;
  });
  m.def("set_isa", [](const std::string& name) {
    try {
      pyengine::set_active_isa(pyengine::isa_from_name(name));
    } catch (const std::invalid_argument& e) {
      throw py::value_error(std::string("set_isa: ") + e.what());
    }
  }, py::arg("name"));
}
