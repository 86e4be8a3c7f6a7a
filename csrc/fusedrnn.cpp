// fusedrnn._C: the pybind11 module, for the CPU kernels' run-time settings only. The ops
// themselves are registered with the dispatcher (torch.ops.fusedrnn; csrc/ops.cpp) when this
// library is loaded.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "cpu/buffer_cache.h"
#include "cpu/bwd_engine.h"
#include "cpu/cpu_common.h"
#include "cpu/dispatch.h"
#include "cpu/row_split.h"
#include "rnn_ops.h"

namespace {

// For tests of Note [Thread team]: runs `copies` calls of fusedrnn::lstm_layer or gru_layer
// (no bias, no state, nothing requiring grad) inside one at::parallel_for region, i.e. from
// inside another parallel region, as a caller's own parallel code would; returns each call's
// output. Python cannot make such a call itself.
std::vector<at::Tensor> layer_in_parallel_region(const std::string& kind, const at::Tensor& x,
                                                 const at::Tensor& w_ih,
                                                 const at::Tensor& w_hh, int64_t copies) {
  TORCH_CHECK_VALUE(kind == "lstm" || kind == "gru", "kind must be 'lstm' or 'gru'");
  std::vector<at::Tensor> out(copies);
  auto& d = c10::Dispatcher::singleton();
  if (kind == "lstm") {
    auto op = d.findSchemaOrThrow("fusedrnn::lstm_layer", "").typed<fusedrnn::LstmLayerFn>();
    at::parallel_for(0, copies, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        out[i] = std::get<0>(op.call(x, w_ih, w_hh, {}, {}, {}, {}, {}, {}, {}, false, {},
                                     "value", {}, {}, {}));
      }
    });
  } else {
    auto op = d.findSchemaOrThrow("fusedrnn::gru_layer", "").typed<fusedrnn::GruLayerFn>();
    at::parallel_for(0, copies, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        out[i] = std::get<0>(op.call(x, w_ih, w_hh, {}, {}, {}, {}, {}, false, {}, "value", {},
                                     {}));
      }
    });
  }
  return out;
}

// A direct Python entry to a dispatcher op: Fn is its C++ signature (rnn_ops.h), Name its
// "fusedrnn::..." name. Calling an op through torch.ops from Python goes through the boxed
// path (arguments to IValues, override checks, a boxed-to-unboxed wrapper): about 8 us a call
// on the development machine, more than the whole small-problem kernel. This entry converts
// the arguments with pybind11's casters and calls the op unboxed through the dispatcher, so
// autograd, Python dispatch modes and profiling see the same op. fusedrnn/ops.py uses it
// outside torch.compile (Dynamo traces torch.ops).
template <class Fn, const char* Name>
struct OpEntry;

template <class R, class... Args, const char* Name>
struct OpEntry<R(Args...), Name> {
  static R call(Args... args) {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow(Name, "").template typed<R(Args...)>();
    return op.call(std::forward<Args>(args)...);
  }
};

constexpr char kLstmLayerName[] = "fusedrnn::lstm_layer";
constexpr char kGruLayerName[] = "fusedrnn::gru_layer";

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedrnn: fused LSTM/GRU kernels (forward and BPTT backward)";
  namespace py = pybind11;
#ifdef FUSEDRNN_CUDA_EMU
  // tools/cuda_emu's host build: only its kernel registrations (rnn_ops.cpp) count; the
  // bindings stay with the real fusedrnn._C.
  m.attr("cuda_built") = true;
  m.attr("emulated") = true;
#else
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
        "gru_forward, gru_backward, lstm_forward_rows, gru_forward_rows, lstm_backward_rows, "
        "gru_backward_rows, chunked_projection, lstm_forward_input, gru_forward_input, "
        "weight_grad, input_grad, lstm_forward_chunked_input, gru_forward_chunked_input] "
        "(the *_rows: calls whose threads split the batch rows; "
        "chunked_projection: per-step forward loops that computed the input projection in "
        "chunks of steps; *_input: forward engine calls that computed the input part "
        "themselves; weight_grad: weight-gradient products computed on the engine's kernels; "
        "input_grad: input gradients dgates W_ih computed on the engine's kernel; "
        "*_forward_chunked_input: forward engine calls that computed the input part in "
        "chunks of steps)");
  m.def("_engine_split", &fusedrnn::cpu::engine_split_name,
        "How the engines' threads share a call: 'auto', 'rule', 'units' or 'rows'");
  m.def("_set_engine_split", &fusedrnn::cpu::set_engine_split, py::arg("name"),
        "Split the engines' work (forward and backward) by 'units', by batch 'rows' (wherever "
        "there are two threads), by shape ('rule'), or by shape and, where the rule is in "
        "doubt, by timing both on a shape's first calls ('auto', the default); returns the "
        "one in use. For tests and benchmarks; not for use while ops run in other threads.");
  m.def("_engine_split_records", [] {
    static const char* kinds[] = {"lstm_forward", "gru_forward", "lstm_backward",
                                  "gru_backward"};
    py::list out;
    for (const auto& r : fusedrnn::cpu::split_records()) {
      using namespace pybind11::literals;
      const int k = r.kind - static_cast<int>(fusedrnn::cpu::EngineRun::LstmForwardRows);
      out.append(py::dict("loop"_a = (k >= 0 && k < 4) ? kinds[k] : "?", "B"_a = r.B,
                          "H"_a = r.H, "R"_a = r.R, "I"_a = r.I, "panel_bytes"_a = r.panel_bytes,
                          "threads"_a = r.threads, "variant"_a = r.variant,
                          "trials_units"_a = r.trials_units, "trials_rows"_a = r.trials_rows,
                          "best_units_ns_per_step"_a = r.best_units_ns,
                          "best_rows_ns_per_step"_a = r.best_rows_ns, "decided"_a = r.decided,
                          "rows"_a = r.rows));
    }
    return out;
  }, "The engines' measured split choices so far (Note [Measured row split]): one dict per "
     "call shape, with the trials of each split, their best times per step and, once "
     "decided, the split chosen (rows=True: batch rows).");
  m.def("_clear_engine_split_records", &fusedrnn::cpu::clear_split_records,
        "Forget the measured split choices (the next calls of each shape measure again).");
  m.def("lstm_layer", &OpEntry<fusedrnn::LstmLayerFn, kLstmLayerName>::call,
        py::call_guard<py::gil_scoped_release>(),
        "torch.ops.fusedrnn.lstm_layer, called directly (positional arguments only)");
  m.def("gru_layer", &OpEntry<fusedrnn::GruLayerFn, kGruLayerName>::call,
        py::call_guard<py::gil_scoped_release>(),
        "torch.ops.fusedrnn.gru_layer, called directly (positional arguments only)");
  m.def("_layer_in_parallel_region", &layer_in_parallel_region, py::arg("kind"),
        py::arg("input"), py::arg("weight_ih"), py::arg("weight_hh"), py::arg("copies"),
        py::call_guard<py::gil_scoped_release>(),
        "Test hook: `copies` layer calls made from inside one at::parallel_for region");
  m.def("_direct_product_limits",
        [] { return std::make_pair(fusedrnn::cpu::kDirectMacs, fusedrnn::cpu::kDirectRows); },
        "(multiply-adds, rows): the CPU layer functions compute a product of at most that many "
        "multiply-adds (a sum over rows: and rows) with plain loops rather than ATen/BLAS "
        "(Note [Direct products for small calls]); for tests");
  m.def("_bwd_engine_loop_ns", &fusedrnn::cpu::bwd_engine_loop_ns,
        "Nanoseconds spent so far inside the backward engine's time loops (the run_team "
        "region: packing and the loop), for benchmarks that compare a step with its floor");
  m.def("_weight_grad", &fusedrnn::cpu::weight_grad_backend,
        "Where the float32 CPU weight and input gradients run: 'auto' (the backward engine's "
        "kernels, but BLAS for large, wide weight gradients on Intel CPUs and oneDNN / BLAS "
        "for input gradients elsewhere), 'engine' or 'blas'");
  m.def("_set_weight_grad", &fusedrnn::cpu::set_weight_grad_backend, py::arg("name"),
        "Run the float32 CPU weight and input gradients by 'auto', on 'engine' or on 'blas' "
        "(weight gradients on at::mm; input gradients on oneDNN or at::mm, as _step_gemm "
        "says); returns the one in use. For tests and "
        "benchmarks; not for use while ops run in other threads.");
  m.def("_outer_sum", &fusedrnn::cpu::outer_sum, py::arg("a"), py::arg("b"),
        py::call_guard<py::gil_scoped_release>(),
        "a^T b for a [K, G], b [K, R] as the CPU backward computes a weight gradient (on the "
        "backend _weight_grad names, or the small-product paths); for tests and benchmarks");
  m.def("_rows_times", &fusedrnn::cpu::rows_times, py::arg("a"), py::arg("w"),
        py::call_guard<py::gil_scoped_release>(),
        "a w for a [M, K], w [K, N] as the CPU backward computes an input gradient (on the "
        "backend _weight_grad names, or the small-product paths); for tests and benchmarks");
  m.def("_empty_cpu_cache", &fusedrnn::cpu::empty_buffer_cache,
        "Return the freed CPU buffers the layer functions keep for reuse to the system "
        "(Note [CPU buffer cache]); returns the bytes released");
  m.def("_cpu_cache_stats", [] {
          const auto st = fusedrnn::cpu::buffer_cache_stats();
          return py::dict(py::arg("cached_bytes") = st.cached_bytes,
                          py::arg("cached_blocks") = st.cached_blocks,
                          py::arg("limit_bytes") = st.limit_bytes, py::arg("hits") = st.hits,
                          py::arg("misses") = st.misses);
        },
        "The CPU buffer cache: freed bytes and blocks held, the limit, and how many requests "
        "it served from freed blocks (hits) or new memory (misses)");
  m.def("_set_cpu_cache_limit", &fusedrnn::cpu::set_buffer_cache_limit, py::arg("bytes"),
        "Hold at most `bytes` of freed CPU buffers (0: no cache); empties the cache and returns "
        "the old limit");
#ifdef FUSEDRNN_WITH_CUDA
  m.attr("cuda_built") = true;
#else
  m.attr("cuda_built") = false;
#endif
#endif  // FUSEDRNN_CUDA_EMU
}
