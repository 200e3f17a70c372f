// Run-time choice of the kernel variant.
#pragma once
#include <string>
#include <vector>

namespace pyengine {

// Ordered: a higher level may use every instruction a lower one does.
// `reference` is the plain implementation the tests compare against.
enum class Isa : int { reference = 0, baseline = 1, avx2 = 2, avx512 = 3 };

Isa best_supported_isa();          // from cpuid (and the OS's saved-state support)
Isa active_isa();                  // the level kernels run at now
void set_active_isa(Isa level);    // throws std::invalid_argument above best_supported_isa()
const char* isa_name(Isa level);
Isa isa_from_name(const std::string& name);  // throws std::invalid_argument
std::vector<Isa> available_isas();           // reference .. best_supported_isa()

}  // namespace pyengine

// PYENGINE_DISPATCH(fn) names the active variant's fn; PYENGINE_DISPATCH_AS
// picks one overload of fn by its function-pointer type.
#ifdef PYENGINE_HAVE_X86_VARIANTS
#define PYENGINE_DISPATCH_AS(Type, fn)                                                   \
  (::pyengine::active_isa() == ::pyengine::Isa::avx512     ? static_cast<Type>(::pyengine::avx512::fn)   \
   : ::pyengine::active_isa() == ::pyengine::Isa::avx2     ? static_cast<Type>(::pyengine::avx2::fn)     \
   : ::pyengine::active_isa() == ::pyengine::Isa::baseline ? static_cast<Type>(::pyengine::baseline::fn) \
                                                          : static_cast<Type>(::pyengine::reference::fn))
#define PYENGINE_DISPATCH(fn)                                              \
  (::pyengine::active_isa() == ::pyengine::Isa::avx512   ? ::pyengine::avx512::fn   \
   : ::pyengine::active_isa() == ::pyengine::Isa::avx2   ? ::pyengine::avx2::fn     \
   : ::pyengine::active_isa() == ::pyengine::Isa::baseline ? ::pyengine::baseline::fn \
                                                          : ::pyengine::reference::fn)
#else
#define PYENGINE_DISPATCH_AS(Type, fn)                                                   \
  (::pyengine::active_isa() == ::pyengine::Isa::baseline ? static_cast<Type>(::pyengine::baseline::fn) \
                                                        : static_cast<Type>(::pyengine::reference::fn))
#define PYENGINE_DISPATCH(fn)                                          \
  (::pyengine::active_isa() == ::pyengine::Isa::baseline ? ::pyengine::baseline::fn \
                                                        : ::pyengine::reference::fn)
#endif
