#include "core/scratch.h"

#include <cstdlib>
#include <new>
#include <stdexcept>

namespace pyengine {
namespace {

struct ScratchSlot {
  float* data = nullptr;
  size_t capacity = 0;
  ~ScratchSlot() { std::free(data); }
};

thread_local ScratchSlot t_slots[kMaxScratchSlots];

}  // namespace

float* scratch_floats(int slot, size_t count) {
  if (slot < 0 || slot >= kMaxScratchSlots) throw std::out_of_range("scratch slot out of range");
  ScratchSlot& s = t_slots[slot];
  if (count > s.capacity) {
    size_t bytes = ((count * sizeof(float) + 63) / 64) * 64;
    void* fresh = std::aligned_alloc(64, bytes);
    if (!fresh) throw std::bad_alloc();
    std::free(s.data);
    s.data = static_cast<float*>(fresh);
    s.capacity = bytes / sizeof(float);
  }
  return s.data;
}

}  // namespace pyengine
