// The LSTM sequence algorithm shared by the CPU and CUDA backends.
//
// Forward, per layer and direction (x: [T, B, I], time-major):
//   input_gates = x W_ih^T                             one GEMM over all T*B rows
//   for t: hidden_gates = h_{t-1} W_hh^T               one GEMM over the active rows
//          fused pointwise step -> c_t, h_t (or m_t)   (the backend's kernel; adds b_ih + b_hh)
//          with a projection: h_t = m_t W_hr^T         one GEMM
// A device may take a step's recurrent GEMM together with its pointwise step
// (PointwiseSteps::forward_with_gemm / backward_with_gemm; the CPU does).
// Backward walks t downwards with one fused pointwise step and one GEMM
// (dL/dh_{t-1} = dG_t W_hh) per step, keeping every pre-activation gradient dG_t,
// then forms the weight gradients as single GEMMs over all steps:
//   [dW_ih | dW_hh] = dG^T [X | H_prev],  db = sum dG,  dX = dG W_ih,  dW_hr = dR^T M.
//
// Variable lengths: batch_sizes[t] rows (a prefix: rows are sorted by decreasing
// length) are active at step t. Inactive rows keep their state, give y = 0 and
// dG = 0, so the all-steps GEMMs need no masking except of padded x entries.

#include <ATen/ATen.h>

#include <vector>

#include "common.h"
#include "recurrent/lstm_sequence.h"

namespace fusednn {
namespace lstm {
namespace {

constexpr const char* kForward = "fusednn::lstm_forward";
constexpr const char* kBackward = "fusednn::lstm_backward";

// The active rows of every step: batch_sizes, or all B rows.
std::vector<int64_t> active_rows_per_step(const ArgumentChecks& check, at::OptionalIntArrayRef batch_sizes,
                                          int64_t T, int64_t B) {
  if (!batch_sizes.has_value()) return std::vector<int64_t>(T, B);
  auto sizes = *batch_sizes;
  check.value(static_cast<int64_t>(sizes.size()) == T, "batch_sizes must have one entry per time step (T = ", T,
              "); got ", sizes.size());
  for (int64_t t = 0; t < T; ++t) {
    check.value(sizes[t] >= 0 && sizes[t] <= B, "batch_sizes[", t, "] must be in [0, B = ", B, "]; got ", sizes[t]);
    check.value(t == 0 || sizes[t] <= sizes[t - 1], "batch_sizes must be non-increasing; got ", sizes[t - 1],
                " then ", sizes[t], " at step ", t);
  }
  return std::vector<int64_t>(sizes.begin(), sizes.end());
}

struct Shapes {
  int64_t T, B, I, H, P;
};

// The arguments lstm_forward and lstm_backward share. x decides the dtype and device
// of the rest.
Shapes check_inputs(const ArgumentChecks& check, at::DeviceType device, const at::Tensor& x, const at::Tensor& h0,
                    const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const std::optional<at::Tensor>& w_hr) {
  check.value(x.defined(), "x must be a tensor; got an undefined one");
  check.value(x.device().type() == device, "x must be a ", at::Device(device), " tensor; got ", x.device());
  const at::ScalarType dtype = x.scalar_type();
  check.type(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
             "x must be torch.float32, torch.float64, torch.float16 or torch.bfloat16; got ", dtype_name(dtype));
  check.value(x.dim() == 3, "x must be [T, B, I] (3-D); got ", x.sizes());
  Shapes s{x.size(0), x.size(1), x.size(2), 0, 0};
  check.value(s.T >= 1, "x must have at least one time step (T >= 1); got ", x.sizes());
  for (const auto& [t, name] : {std::pair{&w_ih, "w_ih"}, {&w_hh, "w_hh"}, {&h0, "h0"}, {&c0, "c0"}}) {
    check.value(t->defined(), name, " must be a tensor; got an undefined one");
  }
  check.device(w_ih, "w_ih", x.device());
  check.dtype(w_ih, "w_ih", dtype);
  check.value(w_ih.dim() == 2 && w_ih.size(0) % 4 == 0 && w_ih.size(1) == s.I, "w_ih must be [4H, I] with I = ",
              s.I, "; got ", w_ih.sizes());
  s.H = s.P = w_ih.size(0) / 4;
  if (w_hr.has_value()) {
    check.value(w_hr->defined(), "w_hr must be a tensor or None; got an undefined one");
    check.device(*w_hr, "w_hr", x.device());
    check.dtype(*w_hr, "w_hr", dtype);
    check.value(w_hr->dim() == 2 && w_hr->size(1) == s.H, "w_hr must be [P, H] with H = ", s.H, "; got ",
                w_hr->sizes());
    s.P = w_hr->size(0);
  }
  check.tensor(w_hh, "w_hh", dtype, x.device(), {4 * s.H, s.P}, w_hr.has_value() ? "[4H, P]" : "[4H, H]");
  check.tensor(h0, "h0", dtype, x.device(), {s.B, s.P}, w_hr.has_value() ? "[B, P]" : "[B, H]");
  check.tensor(c0, "c0", dtype, x.device(), {s.B, s.H}, "[B, H]");
  return s;
}

// An optional argument: absent, or as check.tensor wants it.
void check_optional(const ArgumentChecks& check, const std::optional<at::Tensor>& t, const char* name,
                    at::ScalarType dtype, const at::Device& device, at::IntArrayRef sizes, const char* shape) {
  if (t.has_value()) check.tensor(*t, name, dtype, device, sizes, shape);
}

at::Tensor zeros_or_copy(const std::optional<at::Tensor>& source, at::IntArrayRef sizes,
                         const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  if (source.has_value() && source->defined()) {
    out.copy_(*source);
  } else {
    out.zero_();
  }
  return out;
}

void* ptr(const at::Tensor& t) { return t.defined() && t.numel() > 0 ? t.data_ptr() : nullptr; }

// Step t of a contiguous [T, ...] tensor, without creating a view (the time loops
// run these per step, and ATen views cost about a microsecond each).
void* step_ptr(const at::Tensor& t, int64_t step) {
  if (t.numel() == 0) return nullptr;
  return static_cast<char*>(t.data_ptr()) + step * t.stride(0) * t.element_size();
}

// The first n rows (the active ones), or the tensor itself when all are active.
at::Tensor leading_rows(const at::Tensor& t, int64_t n) { return n == t.size(0) ? t : t.narrow(0, 0, n); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sequence_forward(
    const PointwiseSteps& steps, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    at::OptionalIntArrayRef batch_sizes, bool save_workspace) {
  const ArgumentChecks check(kForward);
  const auto [T, B, I, H, P] = check_inputs(check, steps.device, x, h0, c0, w_ih, w_hh, w_hr);
  check_optional(check, b_ih, "b_ih", x.scalar_type(), x.device(), {4 * H}, "[4H]");
  check_optional(check, b_hh, "b_hh", x.scalar_type(), x.device(), {4 * H}, "[4H]");
  const std::vector<int64_t> active = active_rows_per_step(check, batch_sizes, T, B);
  const bool projected = w_hr.has_value();
  const at::TensorOptions options = x.options();
  const at::ScalarType math_dtype = accumulate_scalar_type(x.scalar_type());
  const at::TensorOptions math_options = options.dtype(math_dtype);
  const bool same_math_type = math_dtype == x.scalar_type();

  // Input projection of every step at once (the bias is added by the pointwise step).
  at::Tensor input_gates = at::empty({T, B, 4 * H}, options);
  at::Tensor input_gate_rows = input_gates.view({T * B, 4 * H});
  at::mm_out(input_gate_rows, x.reshape({T * B, I}), w_ih.t());
  at::Tensor bias;
  if (b_ih.has_value() && b_hh.has_value()) {
    bias = *b_ih + *b_hh;
  } else if (b_ih.has_value() || b_hh.has_value()) {
    bias = b_ih.has_value() ? *b_ih : *b_hh;
  }
  if (bias.defined()) bias = bias.contiguous();

  at::Tensor y = empty_output({T, B, P}, options);
  at::Tensor h_n = empty_output({B, P}, options);
  h_n.copy_(h0);  // the running hidden state: rows keep theirs once their sequence ended
  at::Tensor c_n = empty_output({B, H}, options);
  at::Tensor cell = same_math_type ? c_n : at::empty({B, H}, math_options);
  cell.copy_(c0);

  // Workspace for backward. Activations overwrite the pre-activations in place when
  // the math type is the storage type.
  at::Tensor gates = at::empty({0}, math_options);
  at::Tensor cells = at::empty({0}, math_options);
  if (save_workspace) {
    gates = same_math_type ? input_gates : at::empty({T, B, 4 * H}, math_options);
    cells = at::empty({T, B, H}, math_options);
  }
  // m_t = o * tanh(c_t), the input of the projection; kept for dW_hr when saving.
  at::Tensor unprojected = at::empty({0}, options);
  if (projected) unprojected = at::empty({save_workspace ? T : 1, B, H}, options);

  at::Tensor hidden_gates = at::empty({B, 4 * H}, options);
  // Row-major [K, N] right-hand operands: BLAS runs the skinny per-step GEMMs about
  // 1.7x faster than with a transposed operand, so transpose the weights once.
  const at::Tensor w_hh_t = w_hh.t().contiguous();
  const at::Tensor w_hr_t = projected ? w_hr->t().contiguous() : at::Tensor();
  ForwardStepParams p{};
  p.storage = storage_of(x.scalar_type());
  p.rows = B;
  p.hidden = H;
  p.hidden_gates = ptr(hidden_gates);
  p.bias = bias.defined() ? ptr(bias) : nullptr;
  p.cell = ptr(cell);
  p.hidden_last = projected ? nullptr : ptr(h_n);
  const RecurrentGemm gemm{ptr(h_n), ptr(w_hh_t), ptr(hidden_gates), P, 4 * H};
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = active[t];
    const int64_t m_step = save_workspace ? t : 0;
    p.active_rows = n;
    p.input_gates = step_ptr(input_gates, t);
    p.saved_gates = save_workspace ? step_ptr(gates, t) : nullptr;
    p.saved_cell = save_workspace ? step_ptr(cells, t) : nullptr;
    p.hidden_out = projected ? step_ptr(unprojected, m_step) : step_ptr(y, t);
    if (steps.forward_with_gemm == nullptr || !steps.forward_with_gemm(p, gemm)) {
      if (n > 0) {
        at::Tensor out = leading_rows(hidden_gates, n);
        at::mm_out(out, leading_rows(h_n, n), w_hh_t);
      }
      steps.forward(p);
    }
    if (projected) {
      at::Tensor y_t = y[t];
      if (n > 0) {
        at::Tensor out = y_t.narrow(0, 0, n);
        at::mm_out(out, unprojected[m_step].narrow(0, 0, n), w_hr_t);
        h_n.narrow(0, 0, n).copy_(out);
      }
      if (n < B) y_t.narrow(0, n, B - n).zero_();
    }
  }
  if (!same_math_type) c_n.copy_(cell);
  at::Tensor hidden = projected && save_workspace ? unprojected : at::empty({0}, options);
  return {y, h_n, c_n, gates, cells, hidden};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sequence_backward(
    const PointwiseSteps& steps, const std::optional<at::Tensor>& grad_y, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    at::OptionalIntArrayRef batch_sizes, const at::Tensor& y, const at::Tensor& gates, const at::Tensor& cells,
    const at::Tensor& hidden, bool input_grad) {
  const ArgumentChecks check(kBackward);
  const auto [T, B, I, H, P] = check_inputs(check, steps.device, x, h0, c0, w_ih, w_hh, w_hr);
  const std::vector<int64_t> active = active_rows_per_step(check, batch_sizes, T, B);
  const bool projected = w_hr.has_value();
  const at::TensorOptions options = x.options();
  const at::ScalarType dtype = x.scalar_type(), math_dtype = accumulate_scalar_type(dtype);
  const at::TensorOptions math_options = options.dtype(math_dtype);
  const char* const output_shape = projected ? "[T, B, P]" : "[T, B, H]";
  check_optional(check, grad_y, "grad_y", dtype, x.device(), {T, B, P}, output_shape);
  check_optional(check, grad_h_n, "grad_h_n", dtype, x.device(), {B, P}, projected ? "[B, P]" : "[B, H]");
  check_optional(check, grad_c_n, "grad_c_n", dtype, x.device(), {B, H}, "[B, H]");
  check.tensor(y, "y", dtype, x.device(), {T, B, P}, output_shape);
  // The workspace lstm_forward returns with save_workspace=True; the kernels read it raw.
  check.tensor(gates, "gates", math_dtype, x.device(), {T, B, 4 * H}, "[T, B, 4H]", /*contiguous=*/true);
  check.tensor(cells, "cells", math_dtype, x.device(), {T, B, H}, "[T, B, H]", /*contiguous=*/true);
  if (projected) {
    check.tensor(hidden, "hidden", dtype, x.device(), {T, B, H}, "[T, B, H]", /*contiguous=*/true);
  } else {
    check.tensor(hidden, "hidden", dtype, x.device(), {0}, "[0] (empty without w_hr)");
  }

  at::Tensor grad_output;
  if (grad_y.has_value()) grad_output = grad_y->contiguous();
  // Running gradients: they become grad_h0 / grad_c0 after step 0.
  at::Tensor grad_h = zeros_or_copy(grad_h_n, {B, P}, options);
  at::Tensor grad_c = zeros_or_copy(grad_c_n, {B, H}, math_options);
  at::Tensor c0_math = c0.to(math_options.dtype()).contiguous();
  at::Tensor grad_gates = at::empty({T, B, 4 * H}, options);  // dG; every element is written
  at::Tensor grad_proj, grad_unprojected;                      // dR [T, B, P], dM [B, H]
  if (projected) {
    grad_proj = at::empty({T, B, P}, options);
    grad_unprojected = at::empty({B, H}, options);
  }
  const at::Tensor w_hh_rows = w_hh.contiguous();  // [4H, P] row-major, see sequence_forward
  const at::Tensor w_hr_rows = projected ? w_hr->contiguous() : at::Tensor();

  BackwardStepParams p{};
  p.storage = storage_of(x.scalar_type());
  p.rows = B;
  p.hidden = H;
  p.grad_cell = ptr(grad_c);
  RecurrentGemm gemm{nullptr, ptr(w_hh_rows), ptr(grad_h), 4 * H, P};
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t n = active[t];
    p.active_rows = n;
    p.saved_gates = step_ptr(gates, t);
    p.cell = step_ptr(cells, t);
    p.cell_prev = t > 0 ? step_ptr(cells, t - 1) : ptr(c0_math);
    p.grad_gates = step_ptr(grad_gates, t);
    if (projected) {
      // dR_t = dL/dy_t + recurrent gradient; dM_t = dR_t W_hr.
      at::Tensor grad_proj_t = grad_proj[t];
      if (n > 0) {
        at::Tensor rows = grad_proj_t.narrow(0, 0, n);
        if (grad_output.defined()) {
          at::add_out(rows, grad_output[t].narrow(0, 0, n), grad_h.narrow(0, 0, n));
        } else {
          rows.copy_(grad_h.narrow(0, 0, n));
        }
        at::Tensor out = grad_unprojected.narrow(0, 0, n);
        at::mm_out(out, rows, w_hr_rows);
      }
      if (n < B) grad_proj_t.narrow(0, n, B - n).zero_();
      p.grad_output = nullptr;
      p.grad_hidden = ptr(grad_unprojected);
    } else {
      p.grad_output = grad_output.defined() ? step_ptr(grad_output, t) : nullptr;
      p.grad_hidden = ptr(grad_h);
    }
    gemm.input = p.grad_gates;
    if (steps.backward_with_gemm == nullptr || !steps.backward_with_gemm(p, gemm)) {
      steps.backward(p);
      if (n > 0) {
        at::Tensor out = leading_rows(grad_h, n);
        at::mm_out(out, leading_rows(grad_gates[t], n), w_hh_rows);
      }
    }
  }

  // [dW_ih | dW_hh] = dG^T [X | H_prev] as one GEMM (about 10% faster on the CPU than
  // two), where H_prev = [h0, y_0, ..., y_{T-2}]: for active rows y_{t-1} is h_{t-1}.
  const at::Tensor dG = grad_gates.view({T * B, 4 * H});
  at::Tensor inputs = at::empty({T, B, I + P}, options);
  inputs.narrow(2, 0, I).copy_(x);
  inputs[0].narrow(1, I, P).copy_(h0);
  if (T > 1) inputs.narrow(0, 1, T - 1).narrow(2, I, P).copy_(y.narrow(0, 0, T - 1));
  // Padded entries of x (past a sequence's end) meet dG = 0 but may hold anything.
  for (int64_t t = 0; t < T; ++t) {
    if (active[t] < B) inputs[t].narrow(0, active[t], B - active[t]).narrow(1, 0, I).zero_();
  }
  at::Tensor grad_w_ih_hh = at::mm(dG.t(), inputs.view({T * B, I + P}));
  at::Tensor grad_bias = dG.sum(0, /*keepdim=*/false, math_dtype).to(dtype);
  at::Tensor grad_x = input_grad ? at::mm(dG, w_ih).view({T, B, I}) : at::empty({0}, options);
  at::Tensor grad_w_hr = projected ? at::mm(grad_proj.view({T * B, P}).t(), hidden.reshape({T * B, H}))
                                   : at::empty({0}, options);
  at::Tensor grad_c0 = grad_c.to(x.scalar_type());
  return {grad_x, grad_h, grad_c0, grad_w_ih_hh, grad_bias, grad_w_hr};
}

}  // namespace lstm
}  // namespace fusednn
