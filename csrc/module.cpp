// The compiled module pyengine._C: every op declared in the registry (the
// csrc/<family>/<family>_ops.cpp files), plus the runtime's controls
// (threads, ISA level, the FMA probe).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "core/denormals.h"
#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/parallel.h"
#include "core/registry.h"

namespace py = pybind11;

namespace {

// More threads than this would only make the OpenMP runtime fail to start them (it aborts the process).
constexpr int kMaxThreads = 1024;

int64_t fma_probe(int64_t iterations, int threads) {
  if (iterations < 0 || threads < 1 || threads > kMaxThreads)
    throw py::value_error("fma_probe: iterations must be >= 0 and threads in [1, 1024], got " +
                          std::to_string(iterations) + " and " + std::to_string(threads));
  std::vector<float> sink(static_cast<size_t>(threads), 0.0f);
  py::gil_scoped_release release;
  return PYENGINE_DISPATCH(fma_probe)(sink.data(), iterations, threads);
}

void set_num_threads(int n) {
  if (n < 1 || n > kMaxThreads)
    throw py::value_error("set_num_threads: n must be >= 1 and <= " + std::to_string(kMaxThreads) + ", got " +
                          std::to_string(n));
  pyengine::set_thread_count(n);
}

void bind_runtime(py::module_& m) {
  m.def("fma_probe", &fma_probe, py::arg("iterations"), py::arg("threads") = 1,
        "Register-only FMA loop on `threads` threads; returns the flops done (time it to get the peak).");
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &pyengine::thread_count);
  m.def("flushes_denormals", &pyengine::flushes_denormals,
        "True where kernels run with subnormal floats flushed to zero (x86-64): see the README.");
#ifdef _OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
  m.attr("has_cuda") = false;
  m.def("get_isa", [] { return std::string(pyengine::isa_name(pyengine::active_isa())); });
  m.def("best_isa", [] { return std::string(pyengine::isa_name(pyengine::best_supported_isa())); });
  m.def("available_isas", [] {
    std::vector<std::string> names;
    for (auto level : pyengine::available_isas()) names.push_back(pyengine::isa_name(level));
    return names;
  });
  m.def("set_isa", [](const std::string& name) {
    try {
      pyengine::set_active_isa(pyengine::isa_from_name(name));
    } catch (const std::invalid_argument& e) {
      throw py::value_error(std::string("set_isa: ") + e.what());
    }
  }, py::arg("name"));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pyengine's compiled kernels (private: use pyengine.kernels)";
  pyengine::registry::bind_registry(m);
  bind_runtime(m);
}
