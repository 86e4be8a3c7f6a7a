// The schema of every op in torch.ops.fusedrnn: the one definition of each op's signature.
// Kernels: CPU and CUDA in csrc/rnn_ops.cpp, Autograd in csrc/autograd.cpp, fake (meta) in
// fusedrnn/ops.py (hence set_python_module); the *_grad ops of double backward have one
// CompositeImplicitAutograd kernel, in fusedrnn/_double_backward.py. Meanings and shapes: csrc/rnn_ops.h and
// docs/ops_api.md.
#include <torch/library.h>

TORCH_LIBRARY(fusedrnn, m) {
  m.set_python_module("fusedrnn.ops");
  // The public ops: what fusedrnn.ops.lstm_layer / gru_layer call. The options travel as
  // typed arguments with defaults; grad_clip, grad_clip_mode and truncate only act in the
  // backward, and grad_record (see fusedrnn.ops.new_grad_record) is never read: its gradient
  // is the record. Nothing is keyword-only: from Python, keyword arguments cost about 5 us
  // more per call than positional ones (measured), and the wrappers pass all positionally.
  m.def(
      "lstm_layer(Tensor input, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih=None, "
      "Tensor? bias_hh=None, Tensor? h0=None, Tensor? c0=None, Tensor? weight_hr=None, "
      "Tensor? lengths=None, Tensor? batch_sizes=None, bool reverse=False, "
      "float? grad_clip=None, str grad_clip_mode=\"value\", int? truncate=None, "
      "float? cell_clip=None, Tensor? grad_record=None) -> (Tensor output, Tensor h_n, "
      "Tensor c_n)");
  m.def(
      "gru_layer(Tensor input, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih=None, "
      "Tensor? bias_hh=None, Tensor? h0=None, Tensor? lengths=None, "
      "Tensor? batch_sizes=None, bool reverse=False, float? grad_clip=None, "
      "str grad_clip_mode=\"value\", int? truncate=None, Tensor? grad_record=None) -> "
      "(Tensor output, Tensor h_n)");
  // The forward as the autograd formula runs it: it also returns the tensors the backward
  // needs (csrc/rnn_ops.h).
  m.def(
      "lstm_layer_forward(Tensor input, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, Tensor? h0, Tensor? c0, Tensor? weight_hr, Tensor? lengths, "
      "Tensor? batch_sizes, bool reverse, float? cell_clip) -> (Tensor output, Tensor h_n, "
      "Tensor c_n, Tensor act, Tensor c_raw, Tensor h_pre)");
  m.def(
      "gru_layer_forward(Tensor input, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, "
      "Tensor? bias_hh, Tensor? h0, Tensor? lengths, Tensor? batch_sizes, bool reverse) -> "
      "(Tensor output, Tensor h_n, Tensor saved)");
  m.def(
      "lstm_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
      "Tensor weight_ih, Tensor weight_hh, Tensor? weight_hr, Tensor? h0, Tensor? c0, "
      "Tensor? lengths, Tensor? batch_sizes, Tensor output, Tensor act, Tensor c_raw, "
      "Tensor h_pre, bool reverse, float? grad_clip, str grad_clip_mode, int? truncate, "
      "float? cell_clip, bool has_bias, bool need_input_grad, bool need_weight_grad, "
      "bool track_grad_norms) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  m.def(
      "gru_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor weight_ih, "
      "Tensor weight_hh, Tensor? h0, Tensor? lengths, Tensor? batch_sizes, Tensor output, "
      "Tensor saved, bool reverse, float? grad_clip, str grad_clip_mode, int? truncate, "
      "bool has_bias, bool need_input_grad, bool need_weight_grad, bool track_grad_norms) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The backward as a create_graph backward runs it (Note [Double backward of the layer
  // ops], csrc/autograd.cpp): the gradients of the differentiable arguments of lstm_layer /
  // gru_layer, in their order (input, weight_ih, weight_hh, bias_ih, bias_hh, h0[, c0,
  // weight_hr]), computed differentiably. output_mask says which are wanted; the others are
  // undefined. The kernel is CompositeImplicitAutograd, in fusedrnn/_double_backward.py.
  m.def(
      "lstm_layer_grad(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
      "Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, Tensor? h0, "
      "Tensor? c0, Tensor? weight_hr, Tensor? lengths, Tensor? batch_sizes, bool reverse, "
      "float? grad_clip, str grad_clip_mode, int? truncate, float? cell_clip, "
      "bool[8] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  m.def(
      "gru_layer_grad(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor weight_ih, "
      "Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, Tensor? h0, Tensor? lengths, "
      "Tensor? batch_sizes, bool reverse, float? grad_clip, str grad_clip_mode, int? truncate, "
      "bool[6] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
