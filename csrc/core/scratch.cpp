#include "core/scratch.h"

#include <cstdlib>
#include <new>
#include <vector>

namespace pyengine {
namespace {

constexpr size_t kAlign = 64;
constexpr size_t kFirstBlockBytes = size_t{1} << 20;

struct Block {
  char* data = nullptr;
  size_t capacity = 0;  // bytes
};

// One thread's stack: blocks in order, the top at (block, offset). A buffer
// never spans blocks, and a block is only replaced (with a larger one) when
// nothing in it is live, so live buffers never move.
struct ScratchStack {
  std::vector<Block> blocks;
  size_t block = 0, offset = 0;
  ~ScratchStack() {
    for (Block& b : blocks) std::free(b.data);
  }

  float* take(size_t bytes) {
    // Rounded up to whole cache lines, plus one spare line: consecutive
    // buffers never start a multiple of 4 KiB apart, where they would
    // compete for the same L1/L2 sets.
    bytes = (bytes + kAlign - 1) / kAlign * kAlign + kAlign;
    while (true) {
      if (block == blocks.size()) blocks.push_back(Block{});
      Block& b = blocks[block];
      if (offset == 0 && b.capacity < bytes) grow(b, bytes);
      if (offset + bytes <= b.capacity) {
        float* p = reinterpret_cast<float*>(b.data + offset);
        offset += bytes;
        return p;
      }
      ++block;  // the rest of this block stays unused until the frame closes
      offset = 0;
    }
  }

  static void grow(Block& b, size_t bytes) {
    size_t capacity = b.capacity ? b.capacity : kFirstBlockBytes;
    while (capacity < bytes) capacity *= 2;
    void* fresh = std::aligned_alloc(kAlign, capacity);
    if (!fresh) throw std::bad_alloc();
    std::free(b.data);
    b.data = static_cast<char*>(fresh);
    b.capacity = capacity;
  }
};

thread_local ScratchStack t_stack;

}  // namespace

ScratchFrame::ScratchFrame() : block_(t_stack.block), offset_(t_stack.offset) {}

ScratchFrame::~ScratchFrame() {
  t_stack.block = block_;
  t_stack.offset = offset_;
}

float* ScratchFrame::floats(size_t count) { return t_stack.take(count * sizeof(float)); }

}  // namespace pyengine
