// Per-thread scratch memory for kernels (packing buffers, partial sums), as
// a stack of frames: a kernel opens a ScratchFrame and takes buffers from it;
// a kernel it calls opens its own frame above, so the two can never hand out
// the same memory (convolution calls the GEMM inside a chunk, attention will
// call the GEMM and softmax passes). Closing a frame releases its buffers.
// Compiled once, outside the ISA variants, so that no ISA-specific copy of
// std::vector code can be picked by the linker for another variant.
#pragma once
#include <cstddef>

namespace pyengine {

class ScratchFrame {
 public:
  ScratchFrame();
  ~ScratchFrame();
  ScratchFrame(const ScratchFrame&) = delete;
  ScratchFrame& operator=(const ScratchFrame&) = delete;

  // A 64-byte aligned buffer of at least `count` floats, live until this
  // frame closes. The memory is the calling thread's and is reused: blocks
  // grow when asked for more and are never freed, so a replayed step
  // allocates nothing once every shape has been seen.
  float* floats(size_t count);

 private:
  size_t block_, offset_;  // the stack top when the frame opened
};

}  // namespace pyengine
