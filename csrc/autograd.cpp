// The autograd formulas of the public ops, in C++ (the Autograd dispatch key), so that a
// forward or backward call runs no Python beyond the caller's own.
//
// Note [Autograd of the layer ops]
// fusedrnn::lstm_layer / gru_layer have an Autograd kernel. When no input needs a gradient
// (or grad mode is off) it redispatches the same op below autograd: the device kernel then
// computes the outputs and saves nothing. Otherwise it runs a torch::autograd::Function whose
// forward calls fusedrnn::*_layer_forward (which also returns the tensors BPTT needs; they
// are saved in the node, never returned) and whose backward calls fusedrnn::*_layer_backward
// below autograd (a backward without create_graph runs with grad mode off; see Note [Double
// backward of the layer ops] for the other case). Every call goes through the dispatcher, so
// under torch.compile / AOTAutograd (whose joint graph is traced without create_graph) the
// fake kernels (fusedrnn/ops.py) stand in for the device kernels, forward and backward alike.
//
// Gradients: autograd hands the backward undefined tensors for outputs the loss does not
// use (materialize_grads is off: no zero [T, B, R] is made for nothing); the missing ones are
// made here. d_bias is one tensor for bias_ih and bias_hh: the second gets a copy (in-place
// users would otherwise see their changes applied twice). The gradient of grad_record is the
// gradient record ([2, T]: norms, clip fractions), computed only when grad_record needs it.
//
// Note [Double backward of the layer ops]
// A create_graph backward runs the node's backward with grad mode on, and its gradients must
// then be differentiable again: with respect to the op's inputs (weights, input, states: a
// gradient penalty) and to the incoming gradients (a Hessian-vector product). The fused
// backward op has no derivative, so in that case the backward calls fusedrnn::*_layer_grad
// instead, with autograd: its one kernel is CompositeImplicitAutograd
// (fusedrnn/_double_backward.py), which recomputes the forward with fusedrnn.reference from
// the saved inputs (unpacked with their autograd history; the biases, which the fused
// backward does not need, are kept in the node for it by keep_biases) and differentiates it
// with create_graph, so that autograd records the whole gradient computation.
// fusedrnn.reference defines the clip, truncation and cell-clip semantics by its own
// autograd: the first-order values agree with the fused backward to rounding, the
// second-order values are those of the reference (with grad_clip, see docs/ops_api.md,
// "Double backward", for where gradients meet). The gradient record, which the reference
// does not make, comes from the fused backward op called below autograd for it alone.
// Without create_graph none of this runs: the first-order path is as before.
#include <array>
#include <cstring>
#include <utility>

#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include "checks.h"
#include "rnn_ops.h"

namespace fusedrnn {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The C++ signatures of the ops of Note [Double backward of the layer ops] (schemas in
// csrc/ops.cpp): gradients of the differentiable arguments in forward argument order.
using LstmGradFn = Tensor8(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                           const at::Tensor& grad_c_n, const at::Tensor& input,
                           const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                           const OptTensor& bias_ih, const OptTensor& bias_hh,
                           const OptTensor& h0, const OptTensor& c0, const OptTensor& weight_hr,
                           const OptTensor& lengths, const OptTensor& batch_sizes, bool reverse,
                           std::optional<double> grad_clip, c10::string_view grad_clip_mode,
                           std::optional<int64_t> truncate, std::optional<double> cell_clip,
                           std::array<bool, 8> output_mask);
using GruGradFn = Tensor6(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                          const at::Tensor& input, const at::Tensor& weight_ih,
                          const at::Tensor& weight_hh, const OptTensor& bias_ih,
                          const OptTensor& bias_hh, const OptTensor& h0,
                          const OptTensor& lengths, const OptTensor& batch_sizes, bool reverse,
                          std::optional<double> grad_clip, c10::string_view grad_clip_mode,
                          std::optional<int64_t> truncate, std::array<bool, 6> output_mask);

#define FUSEDRNN_OP(fn_type, name)                                                 \
  const c10::TypedOperatorHandle<fn_type>& name##_op() {                           \
    static const auto handle = c10::Dispatcher::singleton()                        \
                                   .findSchemaOrThrow("fusedrnn::" #name, "")      \
                                   .typed<fn_type>();                              \
    return handle;                                                                 \
  }
FUSEDRNN_OP(LstmLayerFn, lstm_layer)
FUSEDRNN_OP(LstmForwardFn, lstm_layer_forward)
FUSEDRNN_OP(LstmBackwardFn, lstm_layer_backward)
FUSEDRNN_OP(GruLayerFn, gru_layer)
FUSEDRNN_OP(GruForwardFn, gru_layer_forward)
FUSEDRNN_OP(GruBackwardFn, gru_layer_backward)
FUSEDRNN_OP(LstmGradFn, lstm_layer_grad)
FUSEDRNN_OP(GruGradFn, gru_layer_grad)
#undef FUSEDRNN_OP

bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
bool requires_grad(const OptTensor& t) { return t && requires_grad(*t); }

template <class... Ts>
bool any_requires_grad(const Ts&... ts) {
  return at::GradMode::is_enabled() && (requires_grad(ts) || ...);
}

at::Tensor value_or_undefined(const OptTensor& t) { return t ? *t : at::Tensor(); }
OptTensor optional(const at::Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// Which forward arguments are autograd inputs (a Tensor, or an optional tensor that is set):
// a C++ Function numbers its input edges over those only.
class Edges {
 public:
  void add(const at::Tensor&) { index_.push_back(next_++); }
  void add(const OptTensor& t) { index_.push_back(t && t->defined() ? next_++ : -1); }
  void skip() { index_.push_back(-1); }
  std::vector<int64_t> indices() const { return index_; }

 private:
  std::vector<int64_t> index_;
  int64_t next_ = 0;
};

// Whether forward argument `arg` needs its gradient.
bool needs(AutogradContext* ctx, const std::vector<int64_t>& edges, size_t arg) {
  return edges[arg] >= 0 && ctx->needs_input_grad(static_cast<size_t>(edges[arg]));
}

// Whether t is an ordinary contiguous CPU tensor whose memory this code may fill directly:
// not a fake tensor or other tensor subclass (the Python key), not a functorch wrapper.
bool plain_cpu(const at::Tensor& t) {
  const c10::DispatchKeySet keys = t.key_set();
  return t.device().is_cpu() && !keys.has(c10::DispatchKey::Python) &&
         !keys.has_any(c10::functorch_transforms_ks) && t.has_storage() && t.is_contiguous();
}

// Shapes go through SymInts (sym_size, empty_symint): under torch.compile with dynamic
// shapes a plain size() would specialise the graph to this call's B and T. On a plain CPU
// tensor the zeros are a memset: at::zeros' zero_ (a TensorIterator for a few floats) costs
// more than that in a tiny call (Note [Direct products for small calls]).
at::Tensor or_zeros(const at::Tensor& g, c10::SymIntArrayRef shape, const at::Tensor& like) {
  if (g.defined()) return g;
  at::Tensor z = at::empty_symint(shape, like.options());
  if (!plain_cpu(z)) return z.zero_();
  if (z.nbytes() > 0) std::memset(z.data_ptr(), 0, z.nbytes());
  return z;
}

// t.clone() for a contiguous result; a memcpy on a plain CPU tensor (as or_zeros).
at::Tensor copy_of(const at::Tensor& t) {
  if (!plain_cpu(t)) return t.clone();
  at::Tensor out = at::empty_like(t, at::MemoryFormat::Contiguous);
  if (t.nbytes() > 0) std::memcpy(out.data_ptr(), t.const_data_ptr(), t.nbytes());
  return out;
}

c10::SymInt saved_size(AutogradContext* ctx, const char* key) {
  return ctx->saved_data[key].toSymInt();
}

at::Tensor if_needed(const at::Tensor& g, bool wanted) { return wanted ? g : at::Tensor(); }

std::optional<double> opt_double(const c10::IValue& v) {
  return v.isNone() ? std::nullopt : std::optional<double>(v.toDouble());
}
std::optional<int64_t> opt_int(const c10::IValue& v) {
  return v.isNone() ? std::nullopt : std::optional<int64_t>(v.toInt());
}

// The biases, for a create_graph backward only (Note [Double backward of the layer ops]). The
// fused backward does not read them, so they are kept as references with the versions they
// had, not as saved variables: a backward without create_graph then pays nothing for them and
// accepts what it accepted before (a bias changed in place after the forward, an
// inference-mode bias); kept_bias checks the version when the bias is needed.
int64_t version(const OptTensor& t) {
  return t && t->defined() && !t->is_inference() ? t->_version() : -1;
}

void keep_biases(AutogradContext* ctx, const OptTensor& bias_ih, const OptTensor& bias_hh) {
  if (bias_ih) {
    ctx->saved_data.emplace("bias_ih", *bias_ih);
    ctx->saved_data.emplace("bias_ih_version", version(bias_ih));
  }
  if (bias_hh) {
    ctx->saved_data.emplace("bias_hh", *bias_hh);
    ctx->saved_data.emplace("bias_hh_version", version(bias_hh));
  }
}

OptTensor kept_bias(AutogradContext* ctx, const std::string& name) {
  const auto kept = ctx->saved_data.find(name);
  if (kept == ctx->saved_data.end()) return std::nullopt;
  at::Tensor bias = kept->second.toTensor();
  TORCH_CHECK(version(bias) == ctx->saved_data.at(name + "_version").toInt(),
              "fusedrnn: ", name, " has been modified by an inplace operation since the "
              "forward; a create_graph backward recomputes the layer from its value (the "
              "first-order backward does not need it)");
  return bias;
}

// What both layers keep for their backward besides the saved tensors: the input edges
// (Edges), the biases (keep_biases) and the options, in ctx->saved_data.
void save_common(AutogradContext* ctx, const Edges& e, const OptTensor& bias_ih,
                 const OptTensor& bias_hh, bool reverse, std::optional<double> grad_clip,
                 c10::string_view grad_clip_mode, std::optional<int64_t> truncate) {
  keep_biases(ctx, bias_ih, bias_hh);
  ctx->saved_data["edges"] = e.indices();
  ctx->saved_data["reverse"] = reverse;
  ctx->saved_data["grad_clip"] = grad_clip;
  ctx->saved_data["grad_clip_mode"] = std::string(grad_clip_mode);
  ctx->saved_data["truncate"] = truncate;
  ctx->saved_data["has_bias"] = bias_ih.has_value() || bias_hh.has_value();
  ctx->set_materialize_grads(false);
}

// The options of save_common, read back.
struct SavedOptions {
  bool reverse;
  std::optional<double> grad_clip;
  std::string grad_clip_mode;
  std::optional<int64_t> truncate;
  bool has_bias;

  explicit SavedOptions(AutogradContext* ctx)
      : reverse(ctx->saved_data["reverse"].toBool()),
        grad_clip(opt_double(ctx->saved_data["grad_clip"])),
        grad_clip_mode(ctx->saved_data["grad_clip_mode"].toStringRef()),
        truncate(opt_int(ctx->saved_data["truncate"])),
        has_bias(ctx->saved_data["has_bias"].toBool()) {}
};

// Whether any of the forward arguments `args` needs its gradient.
bool needs_any(AutogradContext* ctx, const std::vector<int64_t>& edges,
               std::initializer_list<size_t> args) {
  for (size_t arg : args) {
    if (needs(ctx, edges, arg)) return true;
  }
  return false;
}

// Which of the first N forward arguments (the differentiable ones) need their gradient: the
// output_mask of the *_layer_grad ops.
template <size_t N>
std::array<bool, N> grad_mask(AutogradContext* ctx, const std::vector<int64_t>& edges) {
  std::array<bool, N> mask{};
  for (size_t arg = 0; arg < N; ++arg) mask[arg] = needs(ctx, edges, arg);
  return mask;
}

// The wanted gradients of a *_layer_grad op (in forward argument order) into out[0, N).
template <size_t N, class Tuple, size_t... I>
void put_grads(variable_list& out, const std::array<bool, N>& mask, Tuple&& grads,
               std::index_sequence<I...>) {
  ((out[I] = mask[I] ? std::move(std::get<I>(grads)) : at::Tensor()), ...);
}

// Forward argument positions, as in the schemas.
enum LstmArg : size_t {
  kLInput, kLWih, kLWhh, kLBih, kLBhh, kLH0, kLC0, kLWhr, kLLengths, kLBatchSizes, kLReverse,
  kLClip, kLMode, kLTruncate, kLCellClip, kLRecord, kLCount
};
enum GruArg : size_t {
  kGInput, kGWih, kGWhh, kGBih, kGBhh, kGH0, kGLengths, kGBatchSizes, kGReverse, kGClip, kGMode,
  kGTruncate, kGRecord, kGCount
};

class LstmLayerFunction : public torch::autograd::Function<LstmLayerFunction> {
 public:
  // Positions in save_for_backward (forward below).
  enum Saved : size_t {
    kInput, kWih, kWhh, kWhr, kH0, kC0, kLengths, kBatchSizes, kOutput, kAct, kCRaw, kHPre
  };

  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                               const OptTensor& bias_ih, const OptTensor& bias_hh,
                               const OptTensor& h0, const OptTensor& c0,
                               const OptTensor& weight_hr, const OptTensor& lengths,
                               const OptTensor& batch_sizes, bool reverse,
                               std::optional<double> grad_clip, c10::string_view grad_clip_mode,
                               std::optional<int64_t> truncate, std::optional<double> cell_clip,
                               const OptTensor& grad_record) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, h_n, c_n, act, c_raw, h_pre] =
        lstm_layer_forward_op().call(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0,
                                     weight_hr, lengths, batch_sizes, reverse, cell_clip);
    Edges e;
    e.add(input), e.add(weight_ih), e.add(weight_hh), e.add(bias_ih), e.add(bias_hh);
    e.add(h0), e.add(c0), e.add(weight_hr), e.add(lengths), e.add(batch_sizes);
    for (int i = 0; i < 5; ++i) e.skip();
    e.add(grad_record);
    ctx->save_for_backward({input, weight_ih, weight_hh, value_or_undefined(weight_hr),
                            value_or_undefined(h0), value_or_undefined(c0),
                            value_or_undefined(lengths), value_or_undefined(batch_sizes), y, act,
                            c_raw, h_pre});
    save_common(ctx, e, bias_ih, bias_hh, reverse, grad_clip, grad_clip_mode, truncate);
    ctx->saved_data["B"] = h_n.sym_size(0);
    ctx->saved_data["R"] = h_n.sym_size(1);
    ctx->saved_data["H"] = c_n.sym_size(1);
    ctx->saved_data["cell_clip"] = cell_clip;
    return {y, h_n, c_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    if (at::GradMode::is_enabled()) return backward_create_graph(ctx, saved, grads);
    const std::vector<int64_t> edges = ctx->saved_data["edges"].toIntVector();
    const bool need_input = needs(ctx, edges, kLInput);
    const bool need_weight = needs_any(ctx, edges, {kLWih, kLWhh, kLBih, kLBhh, kLWhr});
    const bool track = needs(ctx, edges, kLRecord);
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [dx, dh0, dc0, dw_ih, dw_hh, db, dw_hr, record] =
        fused_backward(ctx, saved, incoming(ctx, saved, grads), need_input, need_weight, track);
    variable_list out(kLCount);
    out[kLInput] = if_needed(dx, need_input);
    out[kLWih] = if_needed(dw_ih, needs(ctx, edges, kLWih));
    out[kLWhh] = if_needed(dw_hh, needs(ctx, edges, kLWhh));
    out[kLBih] = if_needed(db, needs(ctx, edges, kLBih));
    // Its own tensor for the second bias: torch.autograd.grad hands gradients back as they
    // are, and in-place post-processing of that list must not scale one tensor twice
    // (tests/test_interop.py, test_parameter_gradients_are_distinct_tensors).
    out[kLBhh] = needs(ctx, edges, kLBhh) ? (out[kLBih].defined() ? copy_of(db) : db) : at::Tensor();
    out[kLH0] = if_needed(dh0, needs(ctx, edges, kLH0));
    out[kLC0] = if_needed(dc0, needs(ctx, edges, kLC0));
    out[kLWhr] = if_needed(dw_hr, needs(ctx, edges, kLWhr));
    out[kLRecord] = if_needed(record, track);
    return out;
  }

 private:
  // The gradients of output, h_n, c_n; zeros for those the loss does not use.
  static std::array<at::Tensor, 3> incoming(AutogradContext* ctx, const variable_list& saved,
                                            const variable_list& grads) {
    const at::Tensor& input = saved[kInput];
    const c10::SymInt B = saved_size(ctx, "B"), R = saved_size(ctx, "R"), H = saved_size(ctx, "H");
    return {or_zeros(grads[0], saved[kOutput].sym_sizes(), input),
            or_zeros(grads[1], {B, R}, input), or_zeros(grads[2], {B, H}, input)};
  }

  static Tensor8 fused_backward(AutogradContext* ctx, const variable_list& saved,
                                const std::array<at::Tensor, 3>& g, bool need_input,
                                bool need_weight, bool track) {
    const SavedOptions o(ctx);
    return lstm_layer_backward_op().call(
        g[0], g[1], g[2], saved[kInput], saved[kWih], saved[kWhh], optional(saved[kWhr]),
        optional(saved[kH0]), optional(saved[kC0]), optional(saved[kLengths]),
        optional(saved[kBatchSizes]), saved[kOutput], saved[kAct], saved[kCRaw], saved[kHPre],
        o.reverse, o.grad_clip, o.grad_clip_mode, o.truncate,
        opt_double(ctx->saved_data["cell_clip"]), o.has_bias, need_input, need_weight, track);
  }

  // Note [Double backward of the layer ops].
  static variable_list backward_create_graph(AutogradContext* ctx, const variable_list& saved,
                                             const variable_list& grads) {
    const std::vector<int64_t> edges = ctx->saved_data["edges"].toIntVector();
    const auto mask = grad_mask<kLLengths>(ctx, edges);
    const auto g = incoming(ctx, saved, grads);
    const SavedOptions o(ctx);
    variable_list out(kLCount);
    put_grads(out, mask,
              lstm_layer_grad_op().call(
                  g[0], g[1], g[2], saved[kInput], saved[kWih], saved[kWhh],
                  kept_bias(ctx, "bias_ih"), kept_bias(ctx, "bias_hh"), optional(saved[kH0]),
                  optional(saved[kC0]), optional(saved[kWhr]), optional(saved[kLengths]),
                  optional(saved[kBatchSizes]), o.reverse, o.grad_clip, o.grad_clip_mode,
                  o.truncate, opt_double(ctx->saved_data["cell_clip"]), mask),
              std::make_index_sequence<kLLengths>());
    if (needs(ctx, edges, kLRecord)) {
      at::AutoDispatchBelowADInplaceOrView guard;
      out[kLRecord] = std::get<7>(fused_backward(ctx, saved, g, false, false, true));
    }
    return out;
  }
};

class GruLayerFunction : public torch::autograd::Function<GruLayerFunction> {
 public:
  // Positions in save_for_backward (forward below).
  enum Saved : size_t { kInput, kWih, kWhh, kH0, kLengths, kBatchSizes, kOutput, kSaved };

  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                               const OptTensor& bias_ih, const OptTensor& bias_hh,
                               const OptTensor& h0, const OptTensor& lengths,
                               const OptTensor& batch_sizes, bool reverse,
                               std::optional<double> grad_clip, c10::string_view grad_clip_mode,
                               std::optional<int64_t> truncate, const OptTensor& grad_record) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [y, h_n, saved] = gru_layer_forward_op().call(input, weight_ih, weight_hh, bias_ih,
                                                       bias_hh, h0, lengths, batch_sizes, reverse);
    Edges e;
    e.add(input), e.add(weight_ih), e.add(weight_hh), e.add(bias_ih), e.add(bias_hh);
    e.add(h0), e.add(lengths), e.add(batch_sizes);
    for (int i = 0; i < 4; ++i) e.skip();
    e.add(grad_record);
    ctx->save_for_backward({input, weight_ih, weight_hh, value_or_undefined(h0),
                            value_or_undefined(lengths), value_or_undefined(batch_sizes), y,
                            saved});
    save_common(ctx, e, bias_ih, bias_hh, reverse, grad_clip, grad_clip_mode, truncate);
    ctx->saved_data["B"] = h_n.sym_size(0);
    ctx->saved_data["H"] = h_n.sym_size(1);
    return {y, h_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    if (at::GradMode::is_enabled()) return backward_create_graph(ctx, saved, grads);
    const std::vector<int64_t> edges = ctx->saved_data["edges"].toIntVector();
    const bool need_input = needs(ctx, edges, kGInput);
    const bool need_weight = needs_any(ctx, edges, {kGWih, kGWhh, kGBih, kGBhh});
    const bool track = needs(ctx, edges, kGRecord);
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [dx, dh0, dw_ih, dw_hh, db_ih, db_hh, record] =
        fused_backward(ctx, saved, incoming(ctx, saved, grads), need_input, need_weight, track);
    variable_list out(kGCount);
    out[kGInput] = if_needed(dx, need_input);
    out[kGWih] = if_needed(dw_ih, needs(ctx, edges, kGWih));
    out[kGWhh] = if_needed(dw_hh, needs(ctx, edges, kGWhh));
    out[kGBih] = if_needed(db_ih, needs(ctx, edges, kGBih));
    out[kGBhh] = if_needed(db_hh, needs(ctx, edges, kGBhh));
    out[kGH0] = if_needed(dh0, needs(ctx, edges, kGH0));
    out[kGRecord] = if_needed(record, track);
    return out;
  }

 private:
  // The gradients of output and h_n; zeros for those the loss does not use.
  static std::array<at::Tensor, 2> incoming(AutogradContext* ctx, const variable_list& saved,
                                            const variable_list& grads) {
    const at::Tensor& input = saved[kInput];
    const c10::SymInt B = saved_size(ctx, "B"), H = saved_size(ctx, "H");
    return {or_zeros(grads[0], saved[kOutput].sym_sizes(), input),
            or_zeros(grads[1], {B, H}, input)};
  }

  static Tensor7 fused_backward(AutogradContext* ctx, const variable_list& saved,
                                const std::array<at::Tensor, 2>& g, bool need_input,
                                bool need_weight, bool track) {
    const SavedOptions o(ctx);
    return gru_layer_backward_op().call(
        g[0], g[1], saved[kInput], saved[kWih], saved[kWhh], optional(saved[kH0]),
        optional(saved[kLengths]), optional(saved[kBatchSizes]), saved[kOutput], saved[kSaved],
        o.reverse, o.grad_clip, o.grad_clip_mode, o.truncate, o.has_bias, need_input, need_weight,
        track);
  }

  // Note [Double backward of the layer ops].
  static variable_list backward_create_graph(AutogradContext* ctx, const variable_list& saved,
                                             const variable_list& grads) {
    const std::vector<int64_t> edges = ctx->saved_data["edges"].toIntVector();
    const auto mask = grad_mask<kGLengths>(ctx, edges);
    const auto g = incoming(ctx, saved, grads);
    const SavedOptions o(ctx);
    variable_list out(kGCount);
    put_grads(out, mask,
              gru_layer_grad_op().call(
                  g[0], g[1], saved[kInput], saved[kWih], saved[kWhh], kept_bias(ctx, "bias_ih"),
                  kept_bias(ctx, "bias_hh"), optional(saved[kH0]), optional(saved[kLengths]),
                  optional(saved[kBatchSizes]), o.reverse, o.grad_clip, o.grad_clip_mode,
                  o.truncate, mask),
              std::make_index_sequence<kGLengths>());
    if (needs(ctx, edges, kGRecord)) {
      at::AutoDispatchBelowADInplaceOrView guard;
      out[kGRecord] = std::get<6>(fused_backward(ctx, saved, g, false, false, true));
    }
    return out;
  }
};

Tensor3 lstm_layer_autograd(const at::Tensor& input, const at::Tensor& weight_ih,
                            const at::Tensor& weight_hh, const OptTensor& bias_ih,
                            const OptTensor& bias_hh, const OptTensor& h0, const OptTensor& c0,
                            const OptTensor& weight_hr, const OptTensor& lengths,
                            const OptTensor& batch_sizes, bool reverse,
                            std::optional<double> grad_clip, c10::string_view grad_clip_mode,
                            std::optional<int64_t> truncate, std::optional<double> cell_clip,
                            const OptTensor& grad_record) {
  if (!any_requires_grad(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr,
                         grad_record)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return lstm_layer_op().call(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0, weight_hr,
                                lengths, batch_sizes, reverse, grad_clip, grad_clip_mode,
                                truncate, cell_clip, grad_record);
  }
  // The backward would check the grad options only when it runs: check them now.
  grad_options<double>("fusedrnn.lstm_layer", grad_clip, grad_clip_mode, truncate);
  variable_list out = LstmLayerFunction::apply(input, weight_ih, weight_hh, bias_ih, bias_hh, h0,
                                               c0, weight_hr, lengths, batch_sizes, reverse,
                                               grad_clip, grad_clip_mode, truncate, cell_clip,
                                               grad_record);
  return {out[0], out[1], out[2]};
}

std::tuple<at::Tensor, at::Tensor> gru_layer_autograd(
    const at::Tensor& input, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const OptTensor& bias_ih, const OptTensor& bias_hh, const OptTensor& h0,
    const OptTensor& lengths, const OptTensor& batch_sizes, bool reverse,
    std::optional<double> grad_clip, c10::string_view grad_clip_mode,
    std::optional<int64_t> truncate, const OptTensor& grad_record) {
  if (!any_requires_grad(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, grad_record)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return gru_layer_op().call(input, weight_ih, weight_hh, bias_ih, bias_hh, h0, lengths,
                               batch_sizes, reverse, grad_clip, grad_clip_mode, truncate,
                               grad_record);
  }
  grad_options<double>("fusedrnn.gru_layer", grad_clip, grad_clip_mode, truncate);
  variable_list out = GruLayerFunction::apply(input, weight_ih, weight_hh, bias_ih, bias_hh, h0,
                                              lengths, batch_sizes, reverse, grad_clip,
                                              grad_clip_mode, truncate, grad_record);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedrnn, Autograd, m) {
  m.impl("lstm_layer", &lstm_layer_autograd);
  m.impl("gru_layer", &gru_layer_autograd);
  // The internal ops have no derivative: differentiating them (a direct call with inputs that
  // require grad) raises "derivative for fusedrnn::... is not implemented" when the gradient
  // is taken, instead of silently giving zeros. The public ops' backward never differentiates
  // them: with create_graph it calls the *_layer_grad ops, whose CompositeImplicitAutograd
  // kernel autograd differentiates through (Note [Double backward of the layer ops]).
  for (const char* name : {"lstm_layer_forward", "lstm_layer_backward", "gru_layer_forward",
                           "gru_layer_backward"}) {
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
  }
}

}  // namespace fusedrnn
