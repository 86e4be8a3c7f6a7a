// fusedrnn._C: the pybind11 module, for the CPU kernels' run-time settings only. The ops
// themselves are registered with the dispatcher (torch.ops.fusedrnn; csrc/ops.cpp) when this
// library is loaded.
#include <torch/extension.h>

#include "cpu/cpu_common.h"
#include "cpu/dispatch.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedrnn: fused LSTM/GRU kernels (forward and BPTT backward)";
  namespace py = pybind11;
  m.def("_cpu_capability", &fusedrnn::cpu::capability,
        "The SIMD capability of the CPU kernels in use: 'avx512', 'avx2' or 'default'");
  m.def("_set_cpu_capability", &fusedrnn::cpu::set_capability, py::arg("name"),
        "Use the CPU kernels of capability `name` (at most what the CPU supports); returns the "
        "one in use. Not for use while ops run in other threads.");
  m.def("_step_gemm", &fusedrnn::cpu::step_gemm,
        "Backend of the float32 CPU step GEMMs: 'onednn' or 'blas'");
  m.def("_set_step_gemm", &fusedrnn::cpu::set_step_gemm, py::arg("name"),
        "Use 'onednn' (where torch has it) or 'blas' for the float32 CPU step GEMMs; returns "
        "the one in use. Not for use while ops run in other threads.");
  m.def("_cpu_engine", &fusedrnn::cpu::cpu_engine,
        "The CPU time loop in use: 'auto' (by shape), 'engine' (the persistent engine where "
        "it applies) or 'steps' (one GEMM per step)");
  m.def("_set_cpu_engine", &fusedrnn::cpu::set_cpu_engine, py::arg("name"),
        "Use 'auto', 'engine' or 'steps' for the CPU time loops; returns the one in use. Not "
        "for use while ops run in other threads.");
  m.def("_engine_runs", &fusedrnn::cpu::engine_runs,
        "Layer calls run by the CPU engine so far: [lstm_forward, lstm_backward, "
        "gru_forward, gru_backward]");
#ifdef FUSEDRNN_WITH_CUDA
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
}
