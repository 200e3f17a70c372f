#include "core/dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace pyengine {
namespace {

Isa detect_isa() {
#if defined(PYENGINE_HAVE_X86_VARIANTS) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the OS saves the wide registers.
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
#endif
  return Isa::baseline;
}

std::atomic<int> g_active{-1};

}  // namespace

Isa best_supported_isa() {
  static const Isa best = detect_isa();
  return best;
}

Isa active_isa() {
  int level = g_active.load(std::memory_order_relaxed);
  if (level < 0) {
    level = static_cast<int>(best_supported_isa());
    g_active.store(level, std::memory_order_relaxed);
  }
  return static_cast<Isa>(level);
}

void set_active_isa(Isa level) {
  if (static_cast<int>(level) > static_cast<int>(best_supported_isa()))
    throw std::invalid_argument(std::string("ISA level '") + isa_name(level) +
                                "' is not supported by this CPU (best: '" +
                                isa_name(best_supported_isa()) + "')");
  g_active.store(static_cast<int>(level), std::memory_order_relaxed);
}

const char* isa_name(Isa level) {
  switch (level) {
    case Isa::reference: return "reference";
    case Isa::baseline: return "baseline";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "unknown";
}

Isa isa_from_name(const std::string& name) {
  for (Isa level : {Isa::reference, Isa::baseline, Isa::avx2, Isa::avx512})
    if (name == isa_name(level)) return level;
  throw std::invalid_argument("unknown ISA level '" + name +
                              "' (expected reference, baseline, avx2 or avx512)");
}

std::vector<Isa> available_isas() {
  std::vector<Isa> levels;
  for (int i = 0; i <= static_cast<int>(best_supported_isa()); ++i)
    levels.push_back(static_cast<Isa>(i));
  return levels;
}

}  // namespace pyengine
