// The op registry: every kernel the Python side can call is declared once,
// here in C++, beside its kernel family (csrc/<family>/<family>_ops.cpp).
//
// A declaration names the op's arguments in the kernel's order (outputs
// first, then inputs), each with its role, dtype and shape written in the
// op's own dimension names, its attributes (scalars, flags, codes) with their
// defaults, the work that decides whether the GIL is released, and which
// arguments may be the same array. From it, and nothing else:
//   - one generic binding checks every argument of a role the same way
//     (type, dtype, layout, writability, shape, overlap) and calls the kernel;
//   - shape inference (`_C.infer_shapes`) serves ops.py and the executor, so
//     a shape rule is written once for both the checks and the planner;
//   - `_C.op_table()` exports the declarations, from which pyengine/kernels.py
//     builds its wrappers and docstrings and pyengine/ops.py its Ops.
//
// Shapes are written "(rows, cols)", "(*, cols)" or "(*)": names bind on
// first use and must agree afterwards; "*" is a group of any number of dims
// (at most one per op). An op whose shapes need arithmetic (matmul's
// transposes, broadcasting, convolution) adds a shape rule that binds dims
// and states expected shapes by argument name.
#pragma once
#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace pyengine {
namespace registry {

namespace py = pybind11;

// A short vector kept inline (no heap allocation per call): shapes, and the
// per-argument tables of one call. Ranks above kMaxRank are rejected.
template <typename T, size_t N>
class InlineVec {
 public:
  InlineVec() = default;
  InlineVec(std::initializer_list<T> items) {
    for (const T& v : items) push_back(v);
  }
  template <typename It>
  InlineVec(It first, It last) {
    for (; first != last; ++first) push_back(*first);
  }
  // Copies only the items in use (a whole-array copy dominated a call's cost).
  InlineVec(const InlineVec& o) : size_(o.size_) {
    for (size_t i = 0; i < size_; ++i) items_[i] = o.items_[i];
  }
  InlineVec& operator=(const InlineVec& o) {
    if (this != &o) {
      for (size_t i = 0; i < o.size_; ++i) items_[i] = o.items_[i];
      size_ = o.size_;
    }
    return *this;
  }
  void push_back(const T& v) {
    if (size_ == N) throw std::length_error("InlineVec full");
    items_[size_++] = v;
  }
  void resize(size_t n, const T& v = T()) {
    if (n > N) throw std::length_error("InlineVec full");
    for (size_t i = size_; i < n; ++i) items_[i] = v;
    size_ = n;
  }
  // Puts the first n default-initialized items in use, writing nothing: for
  // a fresh vector whose items' default state is what is wanted (null
  // handles, absent shapes).
  void use_first(size_t n) {
    if (n > N) throw std::length_error("InlineVec full");
    size_ = n;
  }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  T& operator[](size_t i) { return items_[i]; }
  const T& operator[](size_t i) const { return items_[i]; }
  T& back() { return items_[size_ - 1]; }
  const T& back() const { return items_[size_ - 1]; }
  T* begin() { return items_.data(); }
  T* end() { return items_.data() + size_; }
  const T* begin() const { return items_.data(); }
  const T* end() const { return items_.data() + size_; }
  const T* data() const { return items_.data(); }
  T* data() { return items_.data(); }
  bool operator==(const InlineVec& o) const {
    if (size_ != o.size_) return false;
    for (size_t i = 0; i < size_; ++i)
      if (!(items_[i] == o.items_[i])) return false;
    return true;
  }
  bool operator!=(const InlineVec& o) const { return !(*this == o); }

 private:
  std::array<T, N> items_;  // default-initialized: only [0, size_) is ever read
  size_t size_ = 0;
};

constexpr size_t kMaxRank = 16;
constexpr size_t kMaxArgs = 12;
constexpr size_t kMaxAttrs = 8;
constexpr size_t kMaxDims = 24;
using Shape = InlineVec<int64_t, kMaxRank>;

// A shape that may be absent (an optional argument not given). Unlike
// std::optional, constructing one writes two words, not the whole payload:
// a call builds a dozen of them.
class MaybeShape {
 public:
  MaybeShape() = default;
  MaybeShape(const Shape& s) : shape_(s), given_(true) {}  // NOLINT: implicit, like optional
  Shape& fill() {  // marks it given and returns the shape to write
    given_ = true;
    return shape_;
  }
  explicit operator bool() const { return given_; }
  bool has_value() const { return given_; }
  const Shape& operator*() const { return shape_; }
  const Shape* operator->() const { return &shape_; }

 private:
  Shape shape_;
  bool given_ = false;
};

enum class Role {
  input,            // read
  optional_input,   // read, or None
  grad_input,       // read: the gradient flowing into a backward (dY)
  output,           // overwritten; allocated when None
  optional_output,  // overwritten when given, skipped when None
  grad,             // accumulated into (+=), required
  optional_grad,    // accumulated into (+=) when given, skipped when None
  inout,            // read and updated in place (an optimizer's parameter)
  optional_inout,   // the same, or None
};
const char* role_name(Role role);
inline bool is_written(Role r) {
  return r == Role::output || r == Role::optional_output || r == Role::grad ||
         r == Role::optional_grad || r == Role::inout || r == Role::optional_inout;
}
inline bool is_optional(Role r) {
  return r == Role::optional_input || r == Role::optional_output || r == Role::optional_grad ||
         r == Role::optional_inout;
}

enum class DType { f32, index };  // index: int64 or int32 class indices
enum class AttrKind { flag, integer, real, code, int_pair };

// An enum exported to Python by name, e.g. BinaryOp {add: 0, sub: 1, ...}.
struct EnumDecl {
  std::string name;
  std::vector<std::string> members;  // code i is members[i]
};
const EnumDecl& declare_enum(std::string name, std::vector<std::string> members);
// The Activation enum of core/ops.h, declared once (matmul/matmul_ops.cpp)
// for the ops that apply one in their epilogue (matmul, conv2d).
const EnumDecl& activation_enum();

struct ArgDecl {
  std::string name;
  const char* literal;  // the declaration's string: lookups try its address first
  Role role;
  DType dtype;
  std::string shape;  // "(rows, cols)"; empty: the op's shape rule states it
  // Parsed pattern: dim indices into OpDecl::dims; kGroup marks "*".
  std::vector<int> pattern;
  bool has_pattern = false;  // "()" is a pattern (a 0-d array), "" is none
  bool has_group = false;
};

// No default member initializers: a call's table of them (InlineVec<Attr, 8>)
// is then left unwritten until used; `Attr{kind}` still zeroes the rest.
struct Attr {
  AttrKind kind;
  bool flag;
  int64_t integer;  // integers and codes
  double real;
  std::array<int64_t, 2> pair;
};

struct AttrDecl {
  std::string name;
  const char* literal;
  AttrKind kind;
  std::optional<Attr> default_value;  // empty: required
  const EnumDecl* values = nullptr;   // for codes
  int64_t minimum = 0;                // for int pairs
  std::string doc;
};

class Resolution;
class Call;
using ShapeRule = std::function<void(Resolution&)>;
using Check = std::function<void(const Call&)>;
using Kernel = std::function<void(const Call&)>;

struct OpDecl {
  std::string name, doc, family;
  std::vector<ArgDecl> args;
  std::vector<AttrDecl> attrs;
  std::vector<std::string> dims;            // every dim name used ("*" is the group, not a dim)
  std::vector<const char*> dim_literals;    // the declaring literal of each, or nullptr if parsed
  std::vector<std::string> nonempty;        // dims that must be >= 1
  std::vector<std::string> work;            // dims whose product is the work (none: the largest array)
  std::vector<int> work_dims;               // their indices, resolved at registration
  uint32_t nonempty_mask = 0;               // bit d: dims[d] is in `nonempty` (set at registration)
  InlineVec<int, kMaxArgs> returned;        // the arguments a call returns (set at registration)
  InlineVec<int, kMaxArgs> binding_order;   // the arguments by binding rank (set at registration)
  uint32_t written_mask = 0;                // bit a: args[a] is written by the kernel (set at registration)
  std::vector<std::pair<std::string, std::string>> may_alias;  // identical or disjoint
  ShapeRule shape_rule;
  Check check;
  Kernel kernel;

  int arg_index(const char* name) const;  // -1 when absent
  int attr_index(const char* name) const;
  int dim_index(const std::string& name, const char* literal = nullptr);  // adds it when new
  int find_dim(const char* name) const;                                  // -1 when absent
};

// The fluent declaration: PYENGINE_OP registers it when the module loads.
class OpBuilder {
 public:
  OpBuilder(const char* name, const char* family, const char* doc);
  OpBuilder& input(const char* name, const char* shape = "", DType dtype = DType::f32);
  OpBuilder& optional_input(const char* name, const char* shape = "", DType dtype = DType::f32);
  OpBuilder& grad_input(const char* name, const char* shape = "");
  OpBuilder& output(const char* name, const char* shape = "");
  OpBuilder& optional_output(const char* name, const char* shape = "");
  OpBuilder& grad(const char* name, const char* shape = "");
  OpBuilder& optional_grad(const char* name, const char* shape = "");
  OpBuilder& inout(const char* name, const char* shape = "");
  OpBuilder& optional_inout(const char* name, const char* shape = "");
  OpBuilder& flag(const char* name, bool default_value, const char* doc);
  OpBuilder& integer(const char* name, std::optional<int64_t> default_value, const char* doc);
  OpBuilder& real(const char* name, std::optional<double> default_value, const char* doc);
  OpBuilder& code(const char* name, const EnumDecl& values, std::optional<int> default_value,
                  const char* doc);
  OpBuilder& int_pair(const char* name, int64_t default_value, int64_t minimum, const char* doc);
  OpBuilder& dims(std::initializer_list<const char*> names);  // dims a shape rule binds
  OpBuilder& nonempty(const char* dim);
  OpBuilder& work(std::initializer_list<const char*> dims);
  OpBuilder& may_alias(const char* written, const char* read);
  OpBuilder& shape_rule(ShapeRule rule);
  // Declarations a pair shares, written once: op.apply(shared_args).
  OpBuilder& apply(OpBuilder& (*declare)(OpBuilder&)) { return declare(*this); }
  OpBuilder& check(Check check);
  int kernel(Kernel kernel);  // last: registers the op (the int only anchors the static)

 private:
  OpBuilder& arg(const char* name, Role role, DType dtype, const char* shape);
  OpDecl decl_;
};

// Shapes and attributes of one call (or of a shape-inference query), with
// the dims bound so far. Shape rules read it and add to it.
class Resolution {
 public:
  using Shapes = InlineVec<MaybeShape, kMaxArgs>;
  using Attrs = InlineVec<Attr, kMaxAttrs>;
  Resolution(const OpDecl& op, const Shapes& shapes, const Attrs& attrs);
  // It keeps references to the shapes and attributes: a temporary would dangle (an ASan report).
  Resolution(const OpDecl&, Shapes&&, const Attrs&) = delete;
  Resolution(const OpDecl&, const Shapes&, Attrs&&) = delete;
  Resolution(const OpDecl&, Shapes&&, Attrs&&) = delete;
  const OpDecl& op() const { return op_; }
  bool given(const char* arg) const;             // an optional argument that is not None
  const Shape& shape(const char* arg) const;     // an argument's actual shape
  const Attr& attr(const char* name) const;
  void bind(const char* dim, int64_t value);     // dims for the kernel and the work
  void expect(const char* arg, Shape shape);     // the shape an argument must have
  int64_t dim(const char* name) const;
  [[noreturn]] void fail(const std::string& message) const;  // ValueError naming the op

  // Applies the rule, then binds and checks every argument with a pattern.
  void resolve();
  // The shape an argument must have: from the rule, or a given argument's own
  // shape once it fitted its pattern (not copied: most calls never ask).
  const MaybeShape& expected(int arg) const {
    return expected_[arg] || !shapes_[arg] || !op_.args[arg].has_pattern ? expected_[arg] : shapes_[arg];
  }
  int64_t group_size() const;
  const Shape& group() const { return group_; }
  int64_t dim_at(int index) const { return dims_[index]; }

 private:
  void match(int arg);
  [[noreturn]] void mismatch(int arg) const;
  void check_nonempty(int arg) const;
  std::string binder_note(const ArgDecl& arg) const;
  const OpDecl& op_;
  const Shapes& shapes_;
  Shapes expected_;
  const Attrs& attrs_;
  InlineVec<int64_t, kMaxDims> dims_;
  InlineVec<bool, kMaxDims> bound_;
  InlineVec<int, kMaxDims> binder_;  // the argument that bound each dim, -1 for a rule
  int group_binder_ = -1;
  Shape group_;
  bool group_bound_ = false;
};

// What a kernel receives: pointers by argument name, dims, attributes.
class Call {
 public:
  using Pointers = InlineVec<void*, kMaxArgs>;
  using Flags = InlineVec<bool, kMaxArgs>;
  Call(const Resolution& r, const Pointers& pointers, const Flags& int32)
      : r_(r), pointers_(pointers), int32_(int32) {}
  Call(const Resolution&, Pointers&&, const Flags&) = delete;  // kept by reference: no temporaries
  Call(const Resolution&, const Pointers&, Flags&&) = delete;
  // nullptr for a None optional
  float* f32(const char* arg) const { return static_cast<float*>(const_cast<void*>(data(arg))); }
  // By the declaring literal's address first (inline: a kernel asks for each
  // of its arguments on every call), then by name.
  const void* data(const char* arg) const {
    const std::vector<ArgDecl>& args = r_.op().args;
    for (size_t i = 0; i < args.size(); ++i)
      if (args[i].literal == arg) return pointers_[i];
    return data_by_name(arg);
  }
  bool is_int32(const char* arg) const;
  int64_t dim(const char* name) const;                   // "*" is the group's size
  const Shape& group() const { return r_.group(); }
  const Shape& shape(const char* arg) const { return r_.shape(arg); }
  bool flag(const char* name) const { return r_.attr(name).flag; }
  int64_t integer(const char* name) const { return r_.attr(name).integer; }
  float real(const char* name) const { return static_cast<float>(r_.attr(name).real); }
  int code(const char* name) const { return static_cast<int>(r_.attr(name).integer); }
  std::array<int64_t, 2> pair(const char* name) const { return r_.attr(name).pair; }
  [[noreturn]] void fail(const std::string& message) const { r_.fail(message); }

 private:
  const void* data_by_name(const char* arg) const;
  const Resolution& r_;
  const Pointers& pointers_;  // the caller's, alive for the call
  const Flags& int32_;
};

// Every declared op, in registration order.
std::vector<OpDecl>& all_ops();
std::vector<EnumDecl>& all_enums();

// Binds every declared op into the module, with op_table(), enums() and
// infer_shapes().
void bind_registry(py::module_& m);

std::string shape_str(const Shape& s);

// The parts streamed into one string (error messages).
template <typename... Parts>
std::string cat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace registry
}  // namespace pyengine

#define PYENGINE_REGISTRY_CONCAT2(a, b) a##b
#define PYENGINE_REGISTRY_CONCAT(a, b) PYENGINE_REGISTRY_CONCAT2(a, b)
// PYENGINE_OP(name, family, doc).input(...)...kernel(...); at namespace scope.
#define PYENGINE_OP(name, family, doc)                                                  \
  [[maybe_unused]] static const int PYENGINE_REGISTRY_CONCAT(op_decl_, __COUNTER__) =  \
      ::pyengine::registry::OpBuilder(name, family, doc)
