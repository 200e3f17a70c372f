// Denormal (subnormal) floats are flushed to zero inside every kernel call.
//
// Why: x86 cores take a microcode assist, up to ~100x slower, for an FMA
// with a subnormal operand or result. Training makes them: a softmax over a
// large vocabulary whose logits have grown underflows most probabilities,
// and a GEMM of the backward then reads millions of subnormals (PyTorch's
// GPT-2 step slows down about four-fold this way unless
// torch.set_flush_denormal(True)). So the registry's binding runs each
// kernel with the MXCSR's FTZ (results that would be subnormal become 0)
// and DAZ (subnormal inputs read as 0) bits set on the calling thread and on
// the OpenMP workers, and restores the calling thread's MXCSR afterwards:
// numpy and other libraries running on that thread keep IEEE subnormals.
// Every ISA variant, the references included, computes under the same rule,
// so they agree; a value below FLT_MIN (1.18e-38) in a kernel is zero.
#pragma once

namespace pyengine {

class FlushDenormals {
 public:
  FlushDenormals();
  ~FlushDenormals();
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  unsigned saved_;
};

// True when this CPU architecture has the flush bits (x86-64); elsewhere
// FlushDenormals does nothing and subnormals stay as IEEE defines them.
bool flushes_denormals();

}  // namespace pyengine
