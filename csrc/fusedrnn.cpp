// fusedrnn._C: the pybind11 module. Bindings only; see rnn_ops.h for the entry points.
#include <torch/extension.h>

#include "cpu/bwd_engine.h"
#include "cpu/cpu_common.h"
#include "cpu/dispatch.h"
#include "rnn_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedrnn: fused LSTM/GRU kernels (forward and BPTT backward)";
  namespace py = pybind11;
  m.def("lstm_forward", &fusedrnn::lstm_forward, "LSTM layer forward", py::arg("input"),
        py::arg("weight_ih"), py::arg("weight_hh"), py::arg("bias_ih"), py::arg("bias_hh"),
        py::arg("h0"), py::arg("c0"), py::arg("weight_hr"), py::arg("lengths"),
        py::arg("batch_sizes"), py::arg("reverse"), py::arg("cell_clip"), py::arg("save"));
  m.def("lstm_backward", &fusedrnn::lstm_backward, "LSTM layer backward (BPTT)",
        py::arg("grad_output"), py::arg("grad_h_n"), py::arg("grad_c_n"), py::arg("input"),
        py::arg("weight_ih"), py::arg("weight_hh"), py::arg("weight_hr"), py::arg("h0"),
        py::arg("c0"), py::arg("lengths"), py::arg("batch_sizes"), py::arg("output"),
        py::arg("act"), py::arg("c_raw"),
        py::arg("h_pre"), py::arg("reverse"), py::arg("grad_clip"), py::arg("grad_clip_mode"),
        py::arg("truncate"), py::arg("cell_clip"), py::arg("has_bias"),
        py::arg("need_input_grad"), py::arg("need_weight_grad"), py::arg("track_grad_norms"));
  m.def("gru_forward", &fusedrnn::gru_forward, "GRU layer forward", py::arg("input"),
        py::arg("weight_ih"), py::arg("weight_hh"), py::arg("bias_ih"), py::arg("bias_hh"),
        py::arg("h0"), py::arg("lengths"), py::arg("batch_sizes"), py::arg("reverse"),
        py::arg("save"));
  m.def("gru_backward", &fusedrnn::gru_backward, "GRU layer backward (BPTT)",
        py::arg("grad_output"), py::arg("grad_h_n"), py::arg("input"), py::arg("weight_ih"),
        py::arg("weight_hh"), py::arg("h0"), py::arg("lengths"), py::arg("batch_sizes"),
        py::arg("output"),
        py::arg("saved"), py::arg("reverse"), py::arg("grad_clip"), py::arg("grad_clip_mode"),
        py::arg("truncate"), py::arg("has_bias"), py::arg("need_input_grad"),
        py::arg("need_weight_grad"), py::arg("track_grad_norms"));
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
  m.def("_bwd_engine_loop_ns", &fusedrnn::cpu::bwd_engine_loop_ns,
        "Nanoseconds spent so far inside the backward engine's time loops (the run_team "
        "region: packing and the loop), for benchmarks that compare a step with its floor");
#ifdef FUSEDRNN_WITH_CUDA
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
}
