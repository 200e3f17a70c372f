// Declares the kernel set in every ISA namespace that this build compiles.
#pragma once
#include <cstdint>

#define PYENGINE_KERNEL_NS reference
#include "core/kernel_list.inc"
#undef PYENGINE_KERNEL_NS

#define PYENGINE_KERNEL_NS baseline
#include "core/kernel_list.inc"
#undef PYENGINE_KERNEL_NS

#ifdef PYENGINE_HAVE_X86_VARIANTS
#define PYENGINE_KERNEL_NS avx2
#include "core/kernel_list.inc"
#undef PYENGINE_KERNEL_NS

#define PYENGINE_KERNEL_NS avx512
#include "core/kernel_list.inc"
#undef PYENGINE_KERNEL_NS
#endif
