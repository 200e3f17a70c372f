// The op registry's declarations and shape resolution (see registry.h):
// parsing the shape patterns, binding dims from the arguments' shapes and
// the shape rules, and the shapes outputs must have. The Python boundary
// (argument checks, calls, export) is registry_binding.cpp.
#include "core/registry.h"

#include <cstring>
#include <deque>

namespace pyengine {
namespace registry {
namespace {

constexpr int kGroup = -1;  // "*" in a parsed pattern

// Binding order: forward values first, then incoming gradients, then what is written.
int binding_rank(Role r) {
  if (r == Role::input || r == Role::optional_input || r == Role::inout || r == Role::optional_inout)
    return 0;
  if (r == Role::grad_input) return 1;
  return 2;
}

std::vector<std::string> split_dims(const std::string& shape) {
  if (shape.size() < 2 || shape.front() != '(' || shape.back() != ')')
    throw std::logic_error("registry: shape '" + shape + "' must be written (a, b, ...)");
  std::vector<std::string> names;
  std::string current;
  for (char ch : shape.substr(1, shape.size() - 2)) {
    if (ch == ',') {
      names.push_back(current);
      current.clear();
    } else if (ch != ' ') {
      current += ch;
    }
  }
  if (!current.empty()) names.push_back(current);
  return names;
}

}  // namespace

const char* role_name(Role role) {
  switch (role) {
    case Role::input: return "input";
    case Role::optional_input: return "optional_input";
    case Role::grad_input: return "grad_input";
    case Role::output: return "output";
    case Role::optional_output: return "optional_output";
    case Role::grad: return "grad";
    case Role::optional_grad: return "optional_grad";
    case Role::inout: return "inout";
    case Role::optional_inout: return "optional_inout";
  }
  return "unknown";
}

std::string shape_str(const Shape& s) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < s.size(); ++i) out << (i ? ", " : "") << s[i];
  out << (s.size() == 1 ? ",)" : ")");
  return out.str();
}

std::vector<OpDecl>& all_ops() {
  static std::vector<OpDecl> ops;
  return ops;
}

std::vector<EnumDecl>& all_enums() {
  static std::vector<EnumDecl> enums;
  return enums;
}

const EnumDecl& declare_enum(std::string name, std::vector<std::string> members) {
  // Stable addresses: ops keep pointers to their enums.
  static std::deque<EnumDecl> stable;
  stable.push_back(EnumDecl{std::move(name), std::move(members)});
  all_enums().push_back(stable.back());
  return stable.back();
}

// ---------------------------------------------------------------- declarations

// Kernels look arguments up by the same string literals their declaration
// used, which the compiler merges within a file: comparing addresses first
// keeps a lookup to a few instructions, strcmp covers the rest.
template <typename Decls>
int index_by_name(const Decls& decls, const char* n) {
  for (size_t i = 0; i < decls.size(); ++i)
    if (decls[i].literal == n) return static_cast<int>(i);
  for (size_t i = 0; i < decls.size(); ++i)
    if (std::strcmp(decls[i].name.c_str(), n) == 0) return static_cast<int>(i);
  return -1;
}

int OpDecl::arg_index(const char* n) const { return index_by_name(args, n); }
int OpDecl::attr_index(const char* n) const { return index_by_name(attrs, n); }

int OpDecl::dim_index(const std::string& n, const char* literal) {
  for (size_t i = 0; i < dims.size(); ++i)
    if (dims[i] == n) {
      if (literal) dim_literals[i] = literal;
      return static_cast<int>(i);
    }
  if (dims.size() == kMaxDims) throw std::logic_error("registry: too many dims in " + name);
  dims.push_back(n);
  dim_literals.push_back(literal);
  return static_cast<int>(dims.size() - 1);
}

int OpDecl::find_dim(const char* n) const {
  for (size_t i = 0; i < dims.size(); ++i)
    if (dim_literals[i] == n) return static_cast<int>(i);
  for (size_t i = 0; i < dims.size(); ++i)
    if (std::strcmp(dims[i].c_str(), n) == 0) return static_cast<int>(i);
  return -1;
}

OpBuilder::OpBuilder(const char* name, const char* family, const char* doc) {
  decl_.name = name;
  decl_.family = family;
  decl_.doc = doc;
}

OpBuilder& OpBuilder::arg(const char* name, Role role, DType dtype, const char* shape) {
  ArgDecl a{name, name, role, dtype, shape, {}, *shape != 0, false};
  if (*shape) {
    for (const std::string& dim : split_dims(shape)) {
      if (dim == "*") {
        a.has_group = true;
        a.pattern.push_back(kGroup);
      } else {
        a.pattern.push_back(decl_.dim_index(dim));
      }
    }
  }
  if (decl_.args.size() == kMaxArgs) throw std::logic_error("registry: too many args");
  decl_.args.push_back(std::move(a));
  return *this;
}

OpBuilder& OpBuilder::input(const char* n, const char* s, DType d) { return arg(n, Role::input, d, s); }
OpBuilder& OpBuilder::optional_input(const char* n, const char* s, DType d) { return arg(n, Role::optional_input, d, s); }
OpBuilder& OpBuilder::grad_input(const char* n, const char* s) { return arg(n, Role::grad_input, DType::f32, s); }
OpBuilder& OpBuilder::output(const char* n, const char* s) { return arg(n, Role::output, DType::f32, s); }
OpBuilder& OpBuilder::optional_output(const char* n, const char* s) { return arg(n, Role::optional_output, DType::f32, s); }
OpBuilder& OpBuilder::grad(const char* n, const char* s) { return arg(n, Role::grad, DType::f32, s); }
OpBuilder& OpBuilder::optional_grad(const char* n, const char* s) { return arg(n, Role::optional_grad, DType::f32, s); }
OpBuilder& OpBuilder::inout(const char* n, const char* s) { return arg(n, Role::inout, DType::f32, s); }
OpBuilder& OpBuilder::optional_inout(const char* n, const char* s) { return arg(n, Role::optional_inout, DType::f32, s); }

OpBuilder& OpBuilder::flag(const char* name, bool default_value, const char* doc) {
  Attr d{AttrKind::flag};
  d.flag = default_value;
  decl_.attrs.push_back(AttrDecl{name, name, AttrKind::flag, d, nullptr, 0, doc});
  return *this;
}

OpBuilder& OpBuilder::integer(const char* name, std::optional<int64_t> default_value, const char* doc) {
  std::optional<Attr> d;
  if (default_value) d = Attr{AttrKind::integer, false, *default_value};
  decl_.attrs.push_back(AttrDecl{name, name, AttrKind::integer, d, nullptr, 0, doc});
  return *this;
}

OpBuilder& OpBuilder::real(const char* name, std::optional<double> default_value, const char* doc) {
  std::optional<Attr> d;
  if (default_value) d = Attr{AttrKind::real, false, 0, *default_value};
  decl_.attrs.push_back(AttrDecl{name, name, AttrKind::real, d, nullptr, 0, doc});
  return *this;
}

OpBuilder& OpBuilder::code(const char* name, const EnumDecl& values, std::optional<int> default_value,
                           const char* doc) {
  std::optional<Attr> d;
  if (default_value) d = Attr{AttrKind::code, false, *default_value};
  decl_.attrs.push_back(AttrDecl{name, name, AttrKind::code, d, &values, 0, doc});
  return *this;
}

OpBuilder& OpBuilder::int_pair(const char* name, int64_t default_value, int64_t minimum, const char* doc) {
  Attr d{AttrKind::int_pair};
  d.pair = {default_value, default_value};
  decl_.attrs.push_back(AttrDecl{name, name, AttrKind::int_pair, d, nullptr, minimum, doc});
  return *this;
}

OpBuilder& OpBuilder::dims(std::initializer_list<const char*> names) {
  for (const char* n : names) decl_.dim_index(n, n);
  return *this;
}

OpBuilder& OpBuilder::nonempty(const char* dim) {
  decl_.nonempty.push_back(dim);
  return *this;
}

OpBuilder& OpBuilder::work(std::initializer_list<const char*> dims) {
  for (const char* d : dims) decl_.work.push_back(d);
  return *this;
}

OpBuilder& OpBuilder::may_alias(const char* written, const char* read) {
  decl_.may_alias.emplace_back(written, read);
  return *this;
}

OpBuilder& OpBuilder::shape_rule(ShapeRule rule) {
  decl_.shape_rule = std::move(rule);
  return *this;
}

OpBuilder& OpBuilder::check(Check c) {
  decl_.check = std::move(c);
  return *this;
}

int OpBuilder::kernel(Kernel k) {
  decl_.kernel = std::move(k);
  if (decl_.attrs.size() > kMaxAttrs) throw std::logic_error("registry: too many attrs");
  for (const std::string& d : decl_.work) {
    const int i = decl_.find_dim(d.c_str());
    if (i < 0) throw std::logic_error("registry: " + decl_.name + " works on undeclared dim " + d);
    decl_.work_dims.push_back(i);
  }
  static_assert(kMaxDims <= 32, "nonempty_mask has a bit per dim");
  for (const std::string& d : decl_.nonempty) {
    const int i = decl_.find_dim(d.c_str());
    if (i < 0) throw std::logic_error("registry: " + decl_.name + " asks a non-empty undeclared dim " + d);
    decl_.nonempty_mask |= uint32_t{1} << i;
  }
  // A call returns its outputs; an op that only updates in place returns what it updated.
  for (size_t i = 0; i < decl_.args.size(); ++i)
    if (decl_.args[i].role == Role::output) decl_.returned.push_back(static_cast<int>(i));
  for (size_t i = 0; i < decl_.args.size() && decl_.returned.empty(); ++i)
    if (decl_.args[i].role == Role::inout) decl_.returned.push_back(static_cast<int>(i));
  for (size_t i = 0; i < decl_.args.size(); ++i)
    if (is_written(decl_.args[i].role)) decl_.written_mask |= uint32_t{1} << i;
  for (int rank = 0; rank < 3; ++rank)
    for (size_t i = 0; i < decl_.args.size(); ++i)
      if (binding_rank(decl_.args[i].role) == rank) decl_.binding_order.push_back(static_cast<int>(i));
  all_ops().push_back(std::move(decl_));
  return static_cast<int>(all_ops().size());
}

// ---------------------------------------------------------------- resolution

Resolution::Resolution(const OpDecl& op, const Shapes& shapes, const Attrs& attrs)
    : op_(op), shapes_(shapes), attrs_(attrs) {
  expected_.use_first(op.args.size());  // absent
  dims_.use_first(op.dims.size());      // read only once bound
  binder_.resize(op.dims.size(), -1);
  bound_.resize(op.dims.size(), false);
}

void Resolution::fail(const std::string& message) const { throw py::value_error(op_.name + ": " + message); }

bool Resolution::given(const char* arg) const {
  const int i = op_.arg_index(arg);
  return i >= 0 && shapes_[i].has_value();
}

const Shape& Resolution::shape(const char* arg) const {
  const int i = op_.arg_index(arg);
  if (i < 0) throw std::logic_error(op_.name + ": no argument '" + arg + "'");
  if (!shapes_[i]) fail(std::string("the shape of '") + arg + "' is needed");
  return *shapes_[i];
}

const Attr& Resolution::attr(const char* name) const {
  const int i = op_.attr_index(name);
  if (i < 0) throw std::logic_error(op_.name + ": no attribute '" + name + "'");
  return attrs_[i];
}

void Resolution::bind(const char* dim, int64_t value) {
  const int d = op_.find_dim(dim);
  if (d < 0) throw std::logic_error(op_.name + ": bind of undeclared dim '" + dim + "'");
  dims_[d] = value;
  bound_[d] = true;
}

void Resolution::expect(const char* arg, Shape shape) {
  const int i = op_.arg_index(arg);
  if (i < 0) throw std::logic_error(op_.name + ": expect of unknown argument '" + arg + "'");
  expected_[i] = shape;
}

int64_t Resolution::dim(const char* name) const {
  if (name[0] == '*' && name[1] == 0) return group_size();
  const int d = op_.find_dim(name);
  if (d >= 0) return dims_[d];
  throw std::logic_error(op_.name + ": unknown dim '" + name + "'");
}

int64_t Resolution::group_size() const {
  int64_t n = 1;
  for (int64_t d : group_) n *= d;
  return n;
}

void Resolution::check_nonempty(int a) const {
  if (!op_.nonempty_mask) return;
  const ArgDecl& arg = op_.args[a];
  for (int token : arg.pattern)
    if (token >= 0 && (op_.nonempty_mask >> token & 1) && bound_[token] && dims_[token] == 0)
      fail(cat("the '", op_.dims[token], "' dim of '", arg.name, "' must be non-empty, got shape ",
               shape_str(*shapes_[a])));
}

// Binds the dims of argument `a` from its shape, or checks them when bound.
// Every bound dim is checked before any is bound, so a mismatch is reported
// against the dims bound so far (mismatch() says what was expected).
void Resolution::match(int a) {
  const ArgDecl& arg = op_.args[a];
  const Shape& got = *shapes_[a];
  const size_t named = arg.pattern.size() - (arg.has_group ? 1 : 0);
  if (arg.has_group ? got.size() < named : got.size() != named) mismatch(a);
  const size_t group_count = got.size() - named;
  size_t pos = 0;
  for (int token : arg.pattern) {
    if (token == kGroup) {
      if (group_bound_) {
        if (group_.size() != group_count) mismatch(a);
        for (size_t i = 0; i < group_count; ++i)
          if (group_[i] != got[pos + i]) mismatch(a);
      }
      pos += group_count;
      continue;
    }
    if (bound_[token] && dims_[token] != got[pos]) mismatch(a);
    ++pos;
  }
  pos = 0;
  for (int token : arg.pattern) {
    if (token == kGroup) {
      if (!group_bound_) group_ = Shape(got.begin() + pos, got.begin() + pos + group_count);
      group_bound_ = true;
      pos += group_count;
      continue;
    }
    if (!bound_[token]) binder_[token] = a;
    dims_[token] = got[pos++];
    bound_[token] = true;
  }
  if (group_binder_ < 0 && arg.has_group) group_binder_ = a;
}

// The error for an argument that does not fit its pattern: its rank, or the
// shape it would have with the dims bound so far.
void Resolution::mismatch(int a) const {
  const ArgDecl& arg = op_.args[a];
  const Shape& got = *shapes_[a];
  const size_t named = arg.pattern.size() - (arg.has_group ? 1 : 0);
  if (arg.has_group && got.size() < named)
    fail(cat("'", arg.name, "' must have at least ", named, " dims ", arg.shape, ", got shape ",
             shape_str(got)));
  if (!arg.has_group && got.size() != named)
    fail(cat("'", arg.name, "' must be ", named, "-D ", arg.shape, ", got shape ", shape_str(got)));
  Shape want;
  size_t pos = 0;
  for (int token : arg.pattern) {
    if (token == kGroup) {
      const size_t count = got.size() - named;
      if (group_bound_) {
        for (int64_t d : group_) want.push_back(d);
      } else {
        for (size_t i = 0; i < count; ++i) want.push_back(got[pos + i]);
      }
      pos += count;
      continue;
    }
    want.push_back(bound_[token] ? dims_[token] : got[pos]);
    ++pos;
  }
  fail(cat("'", arg.name, "' has shape ", shape_str(got), ", expected ", shape_str(want), binder_note(arg)));
}

// " (from 'x' with shape (3, 4, 2))": which argument fixed the dims that
// `arg` does not fit, when that is another argument given to the call.
std::string Resolution::binder_note(const ArgDecl& arg) const {
  int binder = -1;
  for (int token : arg.pattern) {
    const int b = token == kGroup ? group_binder_ : (bound_[token] ? binder_[token] : -1);
    if (b >= 0 && &op_.args[b] != &arg) binder = b;
  }
  if (binder < 0 || !shapes_[binder]) return "";
  return cat(" from '", op_.args[binder].name, "' with shape ", shape_str(*shapes_[binder]));
}

void Resolution::resolve() {
  // Inputs with a pattern bind their dims first, so a shape rule can rely on
  // their ranks; then the rule; then everything else, in binding order.
  static_assert(kMaxArgs <= 32, "a bit per argument");
  uint32_t matched = 0;
  const size_t n = op_.args.size();
  for (int a : op_.binding_order) {
    const ArgDecl& arg = op_.args[a];
    if (binding_rank(arg.role) != 0) break;
    if (shapes_[a] && arg.has_pattern) {
      match(a);
      matched |= uint32_t{1} << a;
    }
  }
  if (op_.shape_rule) op_.shape_rule(*this);
  for (int a : op_.binding_order) {
    if (!shapes_[a]) continue;
    const ArgDecl& arg = op_.args[a];
    if (expected_[a]) {
      if (*shapes_[a] != *expected_[a])
        fail(cat("'", arg.name, "' has shape ", shape_str(*shapes_[a]), ", expected ", shape_str(*expected_[a])));
    } else if (arg.has_pattern && !(matched >> a & 1)) {
      match(a);
    }
    check_nonempty(a);
  }
  // Outputs not given (to be allocated) get their shape from the bound dims.
  for (size_t a = 0; a < n; ++a) {
    const ArgDecl& arg = op_.args[a];
    if (expected_[a] || !arg.has_pattern || shapes_[a]) continue;  // a given one is its own (expected())
    Shape s;
    bool known = true;
    for (int token : arg.pattern) {
      if (token == kGroup) {
        if (!group_bound_) known = false;
        for (int64_t d : group_) s.push_back(d);
      } else if (bound_[token]) {
        s.push_back(dims_[token]);
      } else {
        known = false;
      }
    }
    if (known) expected_[a] = s;
  }
}

}  // namespace registry
}  // namespace pyengine
