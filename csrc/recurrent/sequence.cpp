// The sequence algorithm shared by every recurrent cell (LSTM, GRU, RNN) and by the
// CPU and CUDA backends.
//
// Forward, per layer and direction (x: [T, B, I], time-major; G gate blocks per cell):
//   input_gates = x W_ih^T                             one GEMM over all T*B rows
//   for t: hidden_gates = h_{t-1} W_hh^T               one GEMM over the active rows
//          fused pointwise step -> state, h_t          (the backend's kernel; adds the bias)
//          LSTM with a projection: h_t = m_t W_hr^T    one GEMM
// A device may take a step's recurrent GEMM together with its pointwise step
// (PointwiseSteps::forward_with_gemm / backward_with_gemm; the CPU does).
// Backward walks t downwards with one fused pointwise step and one GEMM
// (dL/dh_{t-1} = dG_t W_hh) per step, keeping every pre-activation gradient dG_t,
// then forms the weight gradients as single GEMMs over all steps:
//   [dW_ih | dW_hh] = dG^T [X | H_prev],  db = sum dG,  dX = dG W_ih,  dW_hr = dR^T M.
// The GRU's input and hidden gate gradients differ (n = tanh(x_n + r (h_n + b_hn))), so it
// keeps both (dGi for W_ih, b_ih and X; dGh for W_hh, b_hh and the recurrence) and
// takes two GEMMs for the weights.
//
// Variable lengths: batch_sizes[t] rows (a prefix: rows are sorted by decreasing
// length) are active at step t. Inactive rows keep their state, give y = 0 and
// dG = 0, so the all-steps GEMMs need no masking except of padded x entries.

#include "recurrent/sequence.h"

#include <ATen/ATen.h>

#include <array>
#include <vector>

#include "common.h"

namespace fusednn {
namespace recurrent {

// --------------------------------------------------------------------------- steps registry

namespace {

std::array<const PointwiseSteps*, static_cast<size_t>(at::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)>& registry() {
  static std::array<const PointwiseSteps*, static_cast<size_t>(at::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)>
      steps{};
  return steps;
}

}  // namespace

bool register_steps(const PointwiseSteps& steps) {
  registry()[static_cast<size_t>(steps.device)] = &steps;
  return true;
}

const PointwiseSteps& steps_for(at::DeviceType device) {
  const PointwiseSteps* steps = registry()[static_cast<size_t>(device)];
  TORCH_CHECK(steps != nullptr, "fusednn: this build of fusednn._C has no recurrent kernels for ", at::Device(device),
              " tensors");
  return *steps;
}

const char* cell_name(Cell cell) {
  switch (cell) {
    case Cell::kLSTM: return "LSTM";
    case Cell::kGRU: return "GRU";
    case Cell::kRNNTanh: return "RNN (tanh)";
    case Cell::kRNNReLU: return "RNN (relu)";
  }
  return "?";
}

namespace {

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

// Shapes for messages: "4H" (the cell's gate count times H), "[4H, I]", "[4H]".
std::string gate_rows(Cell cell) { return gates(cell) == 1 ? "H" : std::to_string(gates(cell)) + "H"; }
std::string rows_of(Cell cell, const char* columns) { return "[" + gate_rows(cell) + ", " + columns + "]"; }

// The arguments the forward and backward share. x decides the dtype and device of the rest.
Shapes check_inputs(const ArgumentChecks& check, Cell cell, at::DeviceType device, const at::Tensor& x,
                    const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr) {
  check.value(x.defined(), "x must be a tensor; got an undefined one");
  check.value(x.device().type() == device, "x must be a ", at::Device(device), " tensor; got ", x.device());
  const at::ScalarType dtype = x.scalar_type();
  check.type(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
             "x must be torch.float32, torch.float64, torch.float16 or torch.bfloat16; got ", dtype_name(dtype));
  check.value(x.dim() == 3, "x must be [T, B, I] (3-D); got ", x.sizes());
  Shapes s{x.size(0), x.size(1), x.size(2), 0, 0};
  check.value(s.T >= 1, "x must have at least one time step (T >= 1); got ", x.sizes());
  for (const auto& [t, name] : {std::pair{&w_ih, "w_ih"}, {&w_hh, "w_hh"}, {&h0, "h0"}}) {
    check.value(t->defined(), name, " must be a tensor; got an undefined one");
  }
  const int64_t G = gates(cell);
  check.device(w_ih, "w_ih", x.device());
  check.dtype(w_ih, "w_ih", dtype);
  check.value(w_ih.dim() == 2 && w_ih.size(0) % G == 0 && w_ih.size(1) == s.I, "w_ih must be ", rows_of(cell, "I"),
              " with I = ", s.I, "; got ", w_ih.sizes());
  s.H = s.P = w_ih.size(0) / G;
  if (w_hr.has_value()) {
    check.value(cell == Cell::kLSTM, "w_hr (a projection) is the LSTM's only; got one for the ", cell_name(cell));
    check.value(w_hr->defined(), "w_hr must be a tensor or None; got an undefined one");
    check.device(*w_hr, "w_hr", x.device());
    check.dtype(*w_hr, "w_hr", dtype);
    check.value(w_hr->dim() == 2 && w_hr->size(1) == s.H, "w_hr must be [P, H] with H = ", s.H, "; got ",
                w_hr->sizes());
    s.P = w_hr->size(0);
  }
  const std::string w_hh_shape = rows_of(cell, w_hr.has_value() ? "P" : "H");
  check.tensor(w_hh, "w_hh", dtype, x.device(), {G * s.H, s.P}, w_hh_shape.c_str());
  check.tensor(h0, "h0", dtype, x.device(), {s.B, s.P}, w_hr.has_value() ? "[B, P]" : "[B, H]");
  if (cell == Cell::kLSTM) {
    check.value(c0.has_value() && c0->defined(), "c0 must be a tensor; got none");
    check.tensor(*c0, "c0", dtype, x.device(), {s.B, s.H}, "[B, H]");
  } else {
    check.value(!c0.has_value(), "c0 is the LSTM's only; got one for the ", cell_name(cell));
  }
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
  if (!t.defined() || t.numel() == 0) return nullptr;
  return static_cast<char*>(t.data_ptr()) + step * t.stride(0) * t.element_size();
}

// The first n rows (the active ones), or the tensor itself when all are active.
at::Tensor leading_rows(const at::Tensor& t, int64_t n) { return n == t.size(0) ? t : t.narrow(0, 0, n); }

// The bias the pointwise step adds (cell.h's table), contiguous; undefined without biases.
at::Tensor step_bias(Cell cell, const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                     int64_t H) {
  if (!b_ih.has_value() && !b_hh.has_value()) return at::Tensor();
  const at::Tensor& some = b_ih.has_value() ? *b_ih : *b_hh;
  const at::Tensor input = b_ih.has_value() ? *b_ih : at::zeros_like(some);
  const at::Tensor hidden = b_hh.has_value() ? *b_hh : at::zeros_like(some);
  if (cell != Cell::kGRU) return (input + hidden).contiguous();
  // [b_ir + b_hr | b_iz + b_hz | b_in | b_hn]: the n gate adds b_hn inside r (...).
  return at::cat({input.narrow(0, 0, 2 * H) + hidden.narrow(0, 0, 2 * H), input.narrow(0, 2 * H, H),
                  hidden.narrow(0, 2 * H, H)});
}

// Whether the all-steps GEMMs of x's side (input projection, input gradient) go
// through oneDNN (common/recurrent_gemm.h) rather than at::mm.
bool use_onednn(at::DeviceType device, const at::Tensor& w_ih) {
  return device == at::kCPU && OneDnnLinear::usable(w_ih);
}

}  // namespace

ForwardResult sequence_forward(Cell cell, const char* op, at::DeviceType device, const at::Tensor& x,
                               const at::Tensor& h0, const std::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                               const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
                               at::OptionalIntArrayRef batch_sizes, bool save_workspace) {
  const ArgumentChecks check(op);
  const auto [T, B, I, H, P] = check_inputs(check, cell, device, x, h0, c0, w_ih, w_hh, w_hr);
  const int64_t G = gates(cell), S = saved_gates(cell);
  const std::string bias_shape = "[" + gate_rows(cell) + "]";
  check_optional(check, b_ih, "b_ih", x.scalar_type(), x.device(), {G * H}, bias_shape.c_str());
  check_optional(check, b_hh, "b_hh", x.scalar_type(), x.device(), {G * H}, bias_shape.c_str());
  const std::vector<int64_t> active = active_rows_per_step(check, batch_sizes, T, B);
  const PointwiseSteps& steps = steps_for(device);
  const bool projected = w_hr.has_value();
  const at::TensorOptions options = x.options();
  const at::ScalarType math_dtype = accumulate_scalar_type(x.scalar_type());
  const at::TensorOptions math_options = options.dtype(math_dtype);
  const bool same_math_type = math_dtype == x.scalar_type();

  // Input projection of every step at once (the bias is added by the pointwise step).
  const bool onednn = use_onednn(device, w_ih);
  at::Tensor input_gates;
  if (onednn) {
    input_gates = OneDnnLinear(w_ih, T * B)(x.reshape({T * B, I}).contiguous()).view({T, B, G * H});
  } else {
    input_gates = at::empty({T, B, G * H}, options);
    at::Tensor input_gate_rows = input_gates.view({T * B, G * H});
    at::mm_out(input_gate_rows, x.reshape({T * B, I}), w_ih.t());
  }
  const at::Tensor bias = step_bias(cell, b_ih, b_hh, H);

  ForwardResult out;
  out.y = empty_output({T, B, P}, options);
  out.h_n = empty_output({B, P}, options);
  out.h_n.copy_(h0);  // the running hidden state: rows keep theirs once their sequence ended
  at::Tensor state;   // the cell's own state in the math type
  if (cell == Cell::kLSTM) {
    out.c_n = empty_output({B, H}, options);
    state = same_math_type ? out.c_n : at::empty({B, H}, math_options);
    state.copy_(*c0);
  } else if (cell == Cell::kGRU) {
    state = h0.to(math_dtype, /*non_blocking=*/false, /*copy=*/true).contiguous();
  }

  // Workspace for backward. The LSTM's activations overwrite its pre-activations in
  // place when the math type is the storage type (the widths agree).
  out.gates = at::empty({0}, math_options);
  out.states = at::empty({0}, math_options);
  if (save_workspace) {
    out.gates = cell == Cell::kLSTM && same_math_type ? input_gates : at::empty({T, B, S * H}, math_options);
    if (has_state(cell)) out.states = at::empty({T, B, H}, math_options);
  }
  // m_t = o * tanh(c_t), the input of the projection; kept for dW_hr when saving.
  at::Tensor unprojected = at::empty({0}, options);
  if (projected) unprojected = at::empty({save_workspace ? T : 1, B, H}, options);

  at::Tensor hidden_gates = at::empty({B, G * H}, options);
  // Row-major [K, N] right-hand operands: BLAS runs the skinny per-step GEMMs about
  // 1.7x faster than with a transposed operand, so transpose the weights once.
  const at::Tensor w_hh_t = w_hh.t().contiguous();
  const at::Tensor w_hr_t = projected ? w_hr->t().contiguous() : at::Tensor();
  ForwardStepParams p{};
  p.storage = storage_of(x.scalar_type());
  p.cell = cell;
  p.rows = B;
  p.hidden = H;
  p.hidden_gates = ptr(hidden_gates);
  p.bias = bias.defined() ? ptr(bias) : nullptr;
  p.state = state.defined() ? ptr(state) : nullptr;
  p.hidden_last = projected ? nullptr : ptr(out.h_n);
  // The device's fused step splits the step by units, so its GEMM must not read the running
  // h_n that the same step writes: it reads h_{t-1} from y_{t-1} (or h0), which hold it for
  // every row active at t.
  std::optional<UnitPanels> panels;  // W_hh^T by gate blocks
  at::Tensor h0_rows;
  if (steps.forward_with_gemm != nullptr && UnitPanels::usable(x) && B > 0) {
    panels.emplace(w_hh_t, G, H);
    h0_rows = h0.contiguous();
  }
  for (int64_t t = 0; t < T; ++t) {
    const int64_t n = active[t];
    const int64_t m_step = save_workspace ? t : 0;
    p.active_rows = n;
    p.input_gates = step_ptr(input_gates, t);
    p.saved_gates = save_workspace ? step_ptr(out.gates, t) : nullptr;
    p.saved_state = save_workspace ? step_ptr(out.states, t) : nullptr;
    p.hidden_out = projected ? step_ptr(unprojected, m_step) : step_ptr(out.y, t);
    if (!panels.has_value() ||
        !steps.forward_with_gemm(p, StepGemm{&*panels, t == 0 ? ptr(h0_rows) : step_ptr(out.y, t - 1), n, P,
                                             nullptr, 0})) {
      if (n > 0) {
        at::Tensor gates_out = leading_rows(hidden_gates, n);
        at::mm_out(gates_out, leading_rows(out.h_n, n), w_hh_t);
      }
      steps.forward(p);
    }
    if (projected) {
      at::Tensor y_t = out.y[t];
      if (n > 0) {
        at::Tensor rows = y_t.narrow(0, 0, n);
        at::mm_out(rows, unprojected[m_step].narrow(0, 0, n), w_hr_t);
        out.h_n.narrow(0, 0, n).copy_(rows);
      }
      if (n < B) y_t.narrow(0, n, B - n).zero_();
    }
  }
  if (cell == Cell::kLSTM && !same_math_type) out.c_n.copy_(state);
  out.hidden = projected && save_workspace ? unprojected : at::empty({0}, options);
  return out;
}

BackwardResult sequence_backward(Cell cell, const char* op, at::DeviceType device,
                                 const std::optional<at::Tensor>& grad_y, const std::optional<at::Tensor>& grad_h_n,
                                 const std::optional<at::Tensor>& grad_c_n, const at::Tensor& x, const at::Tensor& h0,
                                 const std::optional<at::Tensor>& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                 const std::optional<at::Tensor>& w_hr, at::OptionalIntArrayRef batch_sizes,
                                 const at::Tensor& y, const at::Tensor& gates, const at::Tensor& states,
                                 const at::Tensor& hidden, bool input_grad) {
  const ArgumentChecks check(op);
  const auto [T, B, I, H, P] = check_inputs(check, cell, device, x, h0, c0, w_ih, w_hh, w_hr);
  const int64_t G = recurrent::gates(cell), S = recurrent::saved_gates(cell);
  const std::vector<int64_t> active = active_rows_per_step(check, batch_sizes, T, B);
  const PointwiseSteps& steps = steps_for(device);
  const bool projected = w_hr.has_value();
  const bool separate_input_gates = cell == Cell::kGRU;
  const at::TensorOptions options = x.options();
  const at::ScalarType dtype = x.scalar_type(), math_dtype = accumulate_scalar_type(dtype);
  const at::TensorOptions math_options = options.dtype(math_dtype);
  const char* const output_shape = projected ? "[T, B, P]" : "[T, B, H]";
  check_optional(check, grad_y, "grad_y", dtype, x.device(), {T, B, P}, output_shape);
  check_optional(check, grad_h_n, "grad_h_n", dtype, x.device(), {B, P}, projected ? "[B, P]" : "[B, H]");
  if (cell == Cell::kLSTM) {
    check_optional(check, grad_c_n, "grad_c_n", dtype, x.device(), {B, H}, "[B, H]");
  } else {
    check.value(!grad_c_n.has_value(), "grad_c_n is the LSTM's only; got one for the ", cell_name(cell));
  }
  check.tensor(y, "y", dtype, x.device(), {T, B, P}, output_shape);
  // The workspace the forward returns with save_workspace=True; the kernels read it raw.
  const std::string gates_shape = "[T, B, " + std::to_string(S) + "H]";
  check.tensor(gates, "gates", math_dtype, x.device(), {T, B, S * H}, S == 1 ? "[T, B, H]" : gates_shape.c_str(),
               /*contiguous=*/true);
  if (has_state(cell)) {
    const char* name = cell == Cell::kLSTM ? "cells" : "states";  // as the schemas name them
    check.tensor(states, name, math_dtype, x.device(), {T, B, H}, "[T, B, H]", /*contiguous=*/true);
  }
  if (projected) {
    check.tensor(hidden, "hidden", dtype, x.device(), {T, B, H}, "[T, B, H]", /*contiguous=*/true);
  } else if (cell == Cell::kLSTM) {
    check.tensor(hidden, "hidden", dtype, x.device(), {0}, "[0] (empty without w_hr)");
  }

  at::Tensor grad_output;
  if (grad_y.has_value()) grad_output = grad_y->contiguous();
  // Running gradients: grad_h becomes grad_h0 after step 0 (plus, for the GRU, the gradient
  // carried past the GEMM); the LSTM's grad_state becomes grad_c0.
  at::Tensor grad_h = zeros_or_copy(grad_h_n, {B, P}, options);
  at::Tensor grad_state, state_before;  // [B, H] math: the carried gradient; the state before step 0
  if (cell == Cell::kLSTM) {
    grad_state = zeros_or_copy(grad_c_n, {B, H}, math_options);
    state_before = c0->to(math_dtype).contiguous();
  } else if (cell == Cell::kGRU) {
    grad_state = at::zeros({B, H}, math_options);
    state_before = h0.to(math_dtype).contiguous();
  }
  at::Tensor grad_gates = at::empty({T, B, G * H}, options);  // dGh; every element is written
  at::Tensor grad_input_gates = separate_input_gates ? at::empty({T, B, G * H}, options) : grad_gates;  // dGi
  at::Tensor grad_proj, grad_unprojected;  // dR [T, B, P], dM [B, H]
  if (projected) {
    grad_proj = at::empty({T, B, P}, options);
    grad_unprojected = at::empty({B, H}, options);
  }
  const at::Tensor w_hh_rows = w_hh.contiguous();  // [G*H, P] row-major, see sequence_forward
  const at::Tensor w_hr_rows = projected ? w_hr->contiguous() : at::Tensor();

  BackwardStepParams p{};
  p.storage = storage_of(x.scalar_type());
  p.cell = cell;
  p.rows = B;
  p.hidden = H;
  p.grad_state = grad_state.defined() ? ptr(grad_state) : nullptr;
  // The device's fused steps (PointwiseSteps::backward_with_gemm) where it has them and
  // every dL/dh_t is the GEMM's (no projection in between).
  std::optional<UnitPanels> panels;  // W_hh [G*H, H] as one block of H units
  if (steps.backward_with_gemm != nullptr && UnitPanels::usable(x) && !projected && B > 0) {
    panels.emplace(w_hh_rows, 1, P);
  }
  bool fused = panels.has_value();
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t n = active[t];
    p.active_rows = n;
    p.saved_gates = step_ptr(gates, t);
    p.state = cell == Cell::kLSTM ? step_ptr(states, t) : nullptr;
    p.state_prev = has_state(cell) ? (t > 0 ? step_ptr(states, t - 1) : ptr(state_before)) : nullptr;
    p.grad_gates = step_ptr(grad_gates, t);
    p.grad_input_gates = separate_input_gates ? step_ptr(grad_input_gates, t) : nullptr;
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
    if (fused) {
      const bool first = t == T - 1;  // dL/dh_{T-1} is grad_h_n alone
      const StepGemm gemm{&*panels, first ? nullptr : step_ptr(grad_gates, t + 1), first ? 0 : active[t + 1],
                          G * H, ptr(grad_h), P};
      fused = steps.backward_with_gemm(p, gemm);
      TORCH_INTERNAL_ASSERT(fused || first, "a fused backward step refused a step after accepting the first");
    }
    if (!fused) {
      steps.backward(p);
      if (n > 0) {
        at::Tensor out = leading_rows(grad_h, n);
        at::mm_out(out, leading_rows(grad_gates[t], n), w_hh_rows);
      }
    }
  }
  if (fused && active[0] > 0) {  // the fused steps leave step 0's GEMM: dL/dh0 = dG_0 W_hh
    at::Tensor out = leading_rows(grad_h, active[0]);
    at::mm_out(out, leading_rows(grad_gates[0], active[0]), w_hh_rows);
  }

  // The all-steps GEMMs take [X | H_prev] as one operand (one GEMM for [dW_ih | dW_hh] is
  // about 10% faster on the CPU than two), where H_prev = [h0, y_0, ..., y_{T-2}]: for
  // active rows y_{t-1} is h_{t-1}.
  at::Tensor inputs = at::empty({T, B, I + P}, options);
  inputs.narrow(2, 0, I).copy_(x);
  inputs[0].narrow(1, I, P).copy_(h0);
  if (T > 1) inputs.narrow(0, 1, T - 1).narrow(2, I, P).copy_(y.narrow(0, 0, T - 1));
  // Padded entries of x (past a sequence's end) meet dG = 0 but may hold anything.
  for (int64_t t = 0; t < T; ++t) {
    if (active[t] < B) inputs[t].narrow(0, active[t], B - active[t]).narrow(1, 0, I).zero_();
  }
  const at::Tensor input_rows = inputs.view({T * B, I + P});
  const at::Tensor dGh = grad_gates.view({T * B, G * H}), dGi = grad_input_gates.view({T * B, G * H});
  BackwardResult result;
  if (separate_input_gates) {
    result.grad_w_ih = at::mm(dGi.t(), input_rows.narrow(1, 0, I));
    result.grad_w_hh = at::mm(dGh.t(), input_rows.narrow(1, I, P));
    result.grad_b_ih = dGi.sum(0, /*keepdim=*/false, math_dtype).to(dtype);
    result.grad_b_hh = dGh.sum(0, /*keepdim=*/false, math_dtype).to(dtype);
  } else {
    result.grad_w_ih_hh = at::mm(dGh.t(), input_rows);
    result.grad_bias = dGh.sum(0, /*keepdim=*/false, math_dtype).to(dtype);
  }
  if (input_grad) {
    const bool onednn = use_onednn(device, w_ih);
    result.grad_x = (onednn ? OneDnnLinear(w_ih.t(), T * B)(dGi) : at::mm(dGi, w_ih)).view({T, B, I});
  } else {
    result.grad_x = at::empty({0}, options);
  }
  result.grad_w_hr = projected ? at::mm(grad_proj.view({T * B, P}).t(), hidden.reshape({T * B, H}))
                               : at::empty({0}, options);
  if (cell == Cell::kGRU) grad_h.add_(grad_state);  // h_t = ... + z h_{t-1}: the path past the GEMM
  result.grad_h0 = grad_h;
  if (cell == Cell::kLSTM) result.grad_c0 = grad_state.to(dtype);
  return result;
}

}  // namespace recurrent
}  // namespace fusednn
