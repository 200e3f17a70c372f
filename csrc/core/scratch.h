// Per-thread scratch memory for kernels (packing buffers, partial sums).
// Compiled once, outside the ISA variants, so that no ISA-specific copy of
// std::vector code can be picked by the linker for another variant.
#pragma once
#include <cstddef>

namespace pyengine {

// A 64-byte aligned buffer of at least `count` floats, owned by the calling
// thread and reused across calls. `slot` separates buffers that are live at
// the same time. It grows when asked for more and is never shrunk, so a
// replayed step allocates nothing once every shape has been seen.
float* scratch_floats(int slot, size_t count);
constexpr int kMaxScratchSlots = 4;

}  // namespace pyengine
