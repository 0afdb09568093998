// The convolutional LSTM, one layer (Shi et al., 2015, without peepholes): its schemas,
// its algorithm, and its CPU and CUDA registrations. The convolutions go through ATen
// (oneDNN on the CPU, cuDNN on CUDA); the gates and the state update are the LSTM's own
// fused pointwise step (cell.h), taken from the device's registered steps, so this file
// needs no CUDA headers.
//
//   gates_t = conv(x_t, W_ih) + b_ih + conv(h_{t-1}, W_hh) + b_hh     [B, 4Hc, H, W], order i, f, g, o
//   c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g),  h_t = sigmoid(o) tanh(c_t)
//
// Forward: the input convolution of every step as one convolution over all T*B frames,
// with b_ih + b_hh folded in; then per step the hidden convolution of h_{t-1} and one
// fused pointwise step.
// Backward walks t downwards: per step the fused pointwise backward gives dG_t (the
// gradient of the gates' pre-activations), and the hidden convolution's input gradient
// turns it into dL/dh_{t-1}. Then, over all T*B frames at once: dx and dW_ih from one
// convolution backward, dW_hh from one more (of H_prev = [h0, y_0, ..., y_{T-2}]), and
// db = the sum of dG over (T, B, H, W).
//
// Layout. Every frame is computed channels-last (NHWC): oneDNN's forward convolutions of
// NCHW frames took up to twice as long on a 2-core AMD EPYC (64 frames [64, 32, 32] to
// 256 channels, 3x3: 523 ms NCHW, 272 ms NHWC), and cuDNN's tensor-core convolutions
// prefer NHWC. A channels-last frame's gates are, per pixel, [i | f | g | o] blocks of Hc
// channels, which is the LSTM step's row layout: the step sees rows = B*H*W pixels with
// hidden = Hc, and its state (c, in the accumulate type) is [B, H, W, Hc]. Outputs and
// input gradients follow x's frames (torch's rule for convolutions): channels-last
// frames give channels-last ones, anything else contiguous ones.

#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "common.h"
#include "recurrent/cell.h"
#include "recurrent/sequence.h"

namespace fusednn {
namespace recurrent {
namespace {

using Tensor = at::Tensor;
using OptionalTensor = std::optional<at::Tensor>;

constexpr const char* kForward = "fusednn::conv_lstm_forward";
constexpr const char* kBackward = "fusednn::conv_lstm_backward";
constexpr at::MemoryFormat kChannelsLast = at::MemoryFormat::ChannelsLast;
constexpr std::array<int64_t, 2> kOnes{1, 1};  // the convolutions' stride and dilation
constexpr std::array<int64_t, 2> kZeros{0, 0};

struct Shapes {
  int64_t T, B, C, H, W, Hc;
  std::array<int64_t, 2> pad_ih, pad_hh;  // "same" padding of each convolution
  at::MemoryFormat format;                // of the outputs and input gradients (x's frames')
};

// x [T, B, C, H, W] as T*B channels-last frames [T*B, C, H, W]: a view where x's frames
// are channels-last already, else one copy.
Tensor channels_last_frames(const Tensor& x) {
  const int64_t T = x.size(0), B = x.size(1), C = x.size(2), H = x.size(3), W = x.size(4);
  return x.permute({0, 1, 3, 4, 2}).contiguous().view({T * B, H, W, C}).permute({0, 3, 1, 2});
}

// Channels-last frames (x as a dense [T, B, H, W, C]) give channels-last outputs, every
// other layout contiguous ones. (x that is both, as with C = 1, counts as contiguous.)
at::MemoryFormat format_of(const Tensor& x) {
  return x.permute({0, 1, 3, 4, 2}).is_contiguous() && !x.is_contiguous() ? kChannelsLast
                                                                           : at::MemoryFormat::Contiguous;
}

// The arguments the forward and backward share; x decides the dtype and device of the rest.
Shapes check_inputs(const ArgumentChecks& check, at::DeviceType device, const Tensor& x, const Tensor& h0,
                    const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh) {
  check.value(x.defined(), "x must be a tensor; got an undefined one");
  check.value(x.device().type() == device, "x must be a ", at::Device(device), " tensor; got ", x.device());
  const at::ScalarType dtype = x.scalar_type();
  check.type(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
             "x must be torch.float32, torch.float64, torch.float16 or torch.bfloat16; got ", dtype_name(dtype));
  check.value(x.dim() == 5, "x must be [T, B, C, H, W] (5-D); got ", x.sizes());
  Shapes s{x.size(0), x.size(1), x.size(2), x.size(3), x.size(4), 0, {}, {}, at::MemoryFormat::Contiguous};
  check.value(s.T >= 1, "x must have at least one time step (T >= 1); got ", x.sizes());
  check.value(s.C >= 1, "x must have at least one channel (C >= 1); got ", x.sizes());
  for (const auto& [t, name] : {std::pair{&w_ih, "w_ih"}, {&w_hh, "w_hh"}, {&h0, "h0"}, {&c0, "c0"}}) {
    check.value(t->defined(), name, " must be a tensor; got an undefined one");
  }
  check.device(w_ih, "w_ih", x.device());
  check.dtype(w_ih, "w_ih", dtype);
  check.value(w_ih.dim() == 4 && w_ih.size(0) >= 4 && w_ih.size(0) % 4 == 0 && w_ih.size(1) == s.C &&
                  w_ih.size(2) % 2 == 1 && w_ih.size(3) % 2 == 1,
              "w_ih must be [4Hc, C, kh, kw] with C = ", s.C, ", Hc >= 1 and odd kh, kw; got ", w_ih.sizes());
  s.Hc = w_ih.size(0) / 4;
  check.device(w_hh, "w_hh", x.device());
  check.dtype(w_hh, "w_hh", dtype);
  check.value(w_hh.dim() == 4 && w_hh.size(0) == 4 * s.Hc && w_hh.size(1) == s.Hc && w_hh.size(2) % 2 == 1 &&
                  w_hh.size(3) % 2 == 1,
              "w_hh must be [4Hc, Hc, kh, kw] with Hc = ", s.Hc, " and odd kh, kw; got ", w_hh.sizes());
  check.tensor(h0, "h0", dtype, x.device(), {s.B, s.Hc, s.H, s.W}, "[B, Hc, H, W]");
  check.tensor(c0, "c0", dtype, x.device(), {s.B, s.Hc, s.H, s.W}, "[B, Hc, H, W]");
  s.pad_ih = {w_ih.size(2) / 2, w_ih.size(3) / 2};
  s.pad_hh = {w_hh.size(2) / 2, w_hh.size(3) / 2};
  s.format = format_of(x);
  return s;
}

void check_optional(const ArgumentChecks& check, const OptionalTensor& t, const char* name, at::ScalarType dtype,
                    const at::Device& device, at::IntArrayRef sizes, const char* shape) {
  if (t.has_value()) check.tensor(*t, name, dtype, device, sizes, shape);
}

// Step t of a dense [T, rows, width] buffer (no ATen view: the time loop runs these per step).
void* step_ptr(const Tensor& t, int64_t step, int64_t step_elements) {
  return static_cast<char*>(t.data_ptr()) + step * step_elements * t.element_size();
}

// Frame batch t of a dense [T, B, H, W, channels] tensor as [B, channels, H, W] (channels-last).
Tensor frame(const Tensor& pixels, int64_t step) { return pixels[step].permute({0, 3, 1, 2}); }

// A [N, channels, H, W] tensor's values as a dense [N, H, W, channels] one of `options`.
Tensor pixels_of(const Tensor& t, const at::TensorOptions& options) {
  Tensor out = at::empty({t.size(0), t.size(2), t.size(3), t.size(1)}, options);
  out.copy_(t.permute({0, 2, 3, 1}));
  return out;
}

// A new [T, B, C, H, W] output whose frames are in `format` (channels-last: dense [T, B, H, W, C]).
Tensor empty_frames(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format) {
  if (format != kChannelsLast) return empty_output(sizes, options);
  return empty_output({sizes[0], sizes[1], sizes[3], sizes[4], sizes[2]}, options).permute({0, 1, 4, 2, 3});
}

// `source` ([T, B, C, H, W] frames, or one [B, C, H, W] frame batch; any layout) as a new
// output of `dtype` in `format`.
Tensor output_in(const Tensor& source, at::MemoryFormat format, at::ScalarType dtype) {
  const at::TensorOptions options = source.options().dtype(dtype);
  Tensor out = source.dim() == 5 ? empty_frames(source.sizes(), options, format)
                                 : empty_output(source.sizes(), options.memory_format(format));
  out.copy_(source);
  return out;
}

// b_ih + b_hh (summed in the accumulate type), the one given, or none.
OptionalTensor folded_bias(const OptionalTensor& b_ih, const OptionalTensor& b_hh) {
  if (b_ih.has_value() && b_hh.has_value()) {
    const at::ScalarType math = accumulate_scalar_type(b_ih->scalar_type());
    return (b_ih->to(math) + b_hh->to(math)).to(b_ih->scalar_type());
  }
  return b_ih.has_value() ? b_ih : b_hh;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> conv_lstm_forward(at::DeviceType device, const Tensor& x,
                                                                      const Tensor& h0, const Tensor& c0,
                                                                      const Tensor& w_ih, const Tensor& w_hh,
                                                                      const OptionalTensor& b_ih,
                                                                      const OptionalTensor& b_hh,
                                                                      bool save_workspace) {
  const at::OptionalDeviceGuard device_guard(at::device_of(x));  // x's device is checked with the rest
  const ArgumentChecks check(kForward);
  const Shapes s = check_inputs(check, device, x, h0, c0, w_ih, w_hh);
  const auto [T, B, C, H, W, Hc] = std::array<int64_t, 6>{s.T, s.B, s.C, s.H, s.W, s.Hc};
  check_optional(check, b_ih, "b_ih", x.scalar_type(), x.device(), {4 * Hc}, "[4Hc]");
  check_optional(check, b_hh, "b_hh", x.scalar_type(), x.device(), {4 * Hc}, "[4Hc]");
  const at::TensorOptions options = x.options();
  const at::ScalarType math_dtype = accumulate_scalar_type(x.scalar_type());
  const at::TensorOptions math_options = options.dtype(math_dtype);
  const bool same_math_type = math_dtype == x.scalar_type();
  const int64_t rows = B * H * W;  // the pointwise step's rows: the pixels of a batch of frames

  Tensor y_pixels = empty_output({T, B, H, W, Hc}, options);  // y, channels-last
  Tensor state = pixels_of(c0, math_options);                 // c, [B, H, W, Hc] in the math type
  Tensor gates = at::empty({0}, math_options), cells = at::empty({0}, math_options);
  if (save_workspace) {
    gates = at::empty({T, B, H, W, 4 * Hc}, math_options);
    cells = at::empty({T, B, H, W, Hc}, math_options);
  }
  if (rows > 0) {
    // The input convolution of all T*B frames, channels-last [T*B, 4Hc, H, W], biases folded in.
    const Tensor input_gates =
        at::conv2d(channels_last_frames(x), w_ih, folded_bias(b_ih, b_hh), kOnes, s.pad_ih)
            .contiguous(kChannelsLast);
    // The activations overwrite the pre-activations in place where the types agree.
    if (save_workspace && same_math_type) gates = input_gates.permute({0, 2, 3, 1}).view({T, B, H, W, 4 * Hc});
    const Tensor h0_frames = h0.contiguous(kChannelsLast);
    const PointwiseSteps& steps = steps_for(device);
    ForwardStepParams p{};
    p.storage = storage_of(x.scalar_type());
    p.cell = Cell::kLSTM;
    p.rows = p.active_rows = rows;
    p.hidden = Hc;
    p.bias = nullptr;  // folded into the input convolution
    p.state = state.data_ptr();
    p.hidden_last = nullptr;  // h_n is y's last step
    for (int64_t t = 0; t < T; ++t) {
      const Tensor h_prev = t == 0 ? h0_frames : frame(y_pixels, t - 1);
      const Tensor hidden_gates = at::conv2d(h_prev, w_hh, std::nullopt, kOnes, s.pad_hh).contiguous(kChannelsLast);
      p.input_gates = step_ptr(input_gates, t, rows * 4 * Hc);
      p.hidden_gates = hidden_gates.data_ptr();
      p.saved_gates = save_workspace ? step_ptr(gates, t, rows * 4 * Hc) : nullptr;
      p.saved_state = save_workspace ? step_ptr(cells, t, rows * Hc) : nullptr;
      p.hidden_out = step_ptr(y_pixels, t, rows * Hc);
      steps.forward(p);
    }
  }
  const Tensor y_frames = y_pixels.permute({0, 1, 4, 2, 3});  // [T, B, Hc, H, W]
  const Tensor y = s.format == kChannelsLast ? y_frames : output_in(y_frames, s.format, x.scalar_type());
  const Tensor h_n = output_in(y_frames[T - 1], s.format, x.scalar_type());
  const Tensor c_n = output_in(state.permute({0, 3, 1, 2}), s.format, x.scalar_type());
  return {y, h_n, c_n, gates, cells};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> conv_lstm_backward(
    at::DeviceType device, const OptionalTensor& grad_y, const OptionalTensor& grad_h_n,
    const OptionalTensor& grad_c_n, const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& y, const Tensor& gates, const Tensor& cells, std::array<bool, 3> output_mask) {
  const at::OptionalDeviceGuard device_guard(at::device_of(x));
  const ArgumentChecks check(kBackward);
  const Shapes s = check_inputs(check, device, x, h0, c0, w_ih, w_hh);
  const auto [T, B, C, H, W, Hc] = std::array<int64_t, 6>{s.T, s.B, s.C, s.H, s.W, s.Hc};
  const at::ScalarType dtype = x.scalar_type(), math_dtype = accumulate_scalar_type(dtype);
  const at::TensorOptions options = x.options(), math_options = options.dtype(math_dtype);
  check_optional(check, grad_y, "grad_y", dtype, x.device(), {T, B, Hc, H, W}, "[T, B, Hc, H, W]");
  check_optional(check, grad_h_n, "grad_h_n", dtype, x.device(), {B, Hc, H, W}, "[B, Hc, H, W]");
  check_optional(check, grad_c_n, "grad_c_n", dtype, x.device(), {B, Hc, H, W}, "[B, Hc, H, W]");
  check.tensor(y, "y", dtype, x.device(), {T, B, Hc, H, W}, "[T, B, Hc, H, W]");
  // The workspace the forward returns with save_workspace=True; the step kernels read it raw.
  check.tensor(gates, "gates", math_dtype, x.device(), {T, B, H, W, 4 * Hc}, "[T, B, H, W, 4Hc]",
               /*contiguous=*/true);
  check.tensor(cells, "cells", math_dtype, x.device(), {T, B, H, W, Hc}, "[T, B, H, W, Hc]", /*contiguous=*/true);
  const auto [input_grad, state_grad, weight_grad] = output_mask;
  const int64_t rows = B * H * W;

  Tensor grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias;
  if (rows == 0) {  // no pixels: nothing flows, and the weights meet no input
    if (input_grad) grad_x = empty_frames(x.sizes(), options, s.format).zero_();
    if (state_grad) {
      grad_h0 = grad_h_n.has_value() ? output_in(*grad_h_n, s.format, dtype) : at::zeros_like(h0, s.format);
      grad_c0 = grad_c_n.has_value() ? output_in(*grad_c_n, s.format, dtype) : at::zeros_like(c0, s.format);
    }
    if (weight_grad) {
      grad_w_ih = at::zeros_like(w_ih, at::MemoryFormat::Contiguous);
      grad_w_hh = at::zeros_like(w_hh, at::MemoryFormat::Contiguous);
      grad_bias = at::zeros({4 * Hc}, options);
    }
  } else {
    // Running gradients in pixel order: dL/dh_t reaching step t through the next step's
    // hidden convolution (and h_n), and dL/dc_t carried past it; after step 0 they are
    // grad_h0 and grad_c0.
    Tensor grad_h = grad_h_n.has_value() ? pixels_of(*grad_h_n, options) : at::zeros({B, H, W, Hc}, options);
    Tensor grad_state =
        grad_c_n.has_value() ? pixels_of(*grad_c_n, math_options) : at::zeros({B, H, W, Hc}, math_options);
    const Tensor c0_pixels = pixels_of(c0, math_options);
    Tensor grad_output;  // dL/dy, [T, B, H, W, Hc]
    if (grad_y.has_value()) grad_output = grad_y->permute({0, 1, 3, 4, 2}).contiguous();
    // H_prev = [h0, y_0, ..., y_{T-2}]: the hidden convolution's inputs, [T, B, H, W, Hc].
    Tensor hidden_inputs = at::empty({T, B, H, W, Hc}, options);
    hidden_inputs[0].copy_(h0.permute({0, 2, 3, 1}));
    if (T > 1) hidden_inputs.narrow(0, 1, T - 1).copy_(y.narrow(0, 0, T - 1).permute({0, 1, 3, 4, 2}));
    Tensor grad_gates = at::empty({T, B, H, W, 4 * Hc}, options);  // dG; every element is written

    const PointwiseSteps& steps = steps_for(device);
    BackwardStepParams p{};
    p.storage = storage_of(dtype);
    p.cell = Cell::kLSTM;
    p.rows = p.active_rows = rows;
    p.hidden = Hc;
    p.grad_state = grad_state.data_ptr();
    p.grad_input_gates = nullptr;  // the LSTM's input and hidden gate gradients agree
    for (int64_t t = T - 1; t >= 0; --t) {
      p.saved_gates = step_ptr(gates, t, rows * 4 * Hc);
      p.state = step_ptr(cells, t, rows * Hc);
      p.state_prev = t > 0 ? step_ptr(cells, t - 1, rows * Hc) : c0_pixels.data_ptr();
      p.grad_output = grad_output.defined() ? step_ptr(grad_output, t, rows * Hc) : nullptr;
      p.grad_hidden = grad_h.data_ptr();
      p.grad_gates = step_ptr(grad_gates, t, rows * 4 * Hc);
      steps.backward(p);
      if (t > 0 || state_grad) {  // dL/dh_{t-1} = the hidden convolution's input gradient of dG_t
        const auto grads = at::convolution_backward(frame(grad_gates, t), frame(hidden_inputs, t), w_hh,
                                                    std::nullopt, kOnes, s.pad_hh, kOnes, false, kZeros, 1,
                                                    {true, false, false});
        grad_h = std::get<0>(grads).permute({0, 2, 3, 1}).contiguous();
      }
    }

    // Every frame at once: dx and dW_ih in one convolution backward, dW_hh in another.
    const Tensor grad_frames = grad_gates.view({T * B, H, W, 4 * Hc}).permute({0, 3, 1, 2});
    if (input_grad || weight_grad) {
      const auto grads = at::convolution_backward(grad_frames, channels_last_frames(x), w_ih,
                                                  std::nullopt, kOnes, s.pad_ih, kOnes, false, kZeros, 1,
                                                  {input_grad, weight_grad, false});
      if (input_grad) {
        const Tensor& frames = std::get<0>(grads);  // [T*B, C, H, W]
        grad_x = s.format == kChannelsLast && frames.is_contiguous(kChannelsLast)
                     ? frames.view({T, B, C, H, W})
                     : output_in(frames.view({T, B, C, H, W}), s.format, dtype);
      }
      if (weight_grad) grad_w_ih = std::get<1>(grads).contiguous();
    }
    if (weight_grad) {
      const Tensor hidden_frames = hidden_inputs.view({T * B, H, W, Hc}).permute({0, 3, 1, 2});
      grad_w_hh = std::get<1>(at::convolution_backward(grad_frames, hidden_frames, w_hh, std::nullopt, kOnes,
                                                       s.pad_hh, kOnes, false, kZeros, 1, {false, true, false}))
                      .contiguous();
      grad_bias = grad_gates.view({T * rows, 4 * Hc}).sum(0, /*keepdim=*/false, math_dtype).to(dtype);
    }
    if (state_grad) {
      grad_h0 = output_in(grad_h.permute({0, 3, 1, 2}), s.format, dtype);
      grad_c0 = output_in(grad_state.permute({0, 3, 1, 2}), s.format, dtype);
    }
  }
  // Gradients not asked for come back empty.
  for (Tensor* g : {&grad_x, &grad_h0, &grad_c0, &grad_w_ih, &grad_w_hh, &grad_bias}) {
    if (!g->defined()) *g = at::empty({0}, options);
  }
  return {grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias};
}

template <at::DeviceType kDevice>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> forward_on(const Tensor& x, const Tensor& h0, const Tensor& c0,
                                                              const Tensor& w_ih, const Tensor& w_hh,
                                                              const OptionalTensor& b_ih, const OptionalTensor& b_hh,
                                                              bool save_workspace) {
  return conv_lstm_forward(kDevice, x, h0, c0, w_ih, w_hh, b_ih, b_hh, save_workspace);
}

template <at::DeviceType kDevice>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward_on(
    const OptionalTensor& grad_y, const OptionalTensor& grad_h_n, const OptionalTensor& grad_c_n, const Tensor& x,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh, const Tensor& y,
    const Tensor& gates, const Tensor& cells, std::array<bool, 3> output_mask) {
  return conv_lstm_backward(kDevice, grad_y, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, y, gates, cells,
                            output_mask);
}

}  // namespace
}  // namespace recurrent
}  // namespace fusednn

TORCH_LIBRARY_FRAGMENT(fusednn, m) {
  // One ConvLSTM layer over a time-major x [T, B, C, H, W]; h0, c0 [B, Hc, H, W]; w_ih
  // [4Hc, C, kh, kw], w_hh [4Hc, Hc, kh', kw'] (odd sizes, "same" padding); b_ih, b_hh
  // [4Hc]; gate order i, f, g, o. y [T, B, Hc, H, W], h_n and c_n [B, Hc, H, W], in the
  // memory format of x's frames (channels-last or contiguous). With save_workspace the
  // forward also returns what its backward needs, channels-last in the accumulate dtype
  // (float32 for half types): gates [T, B, H, W, 4Hc] (the activations i, f, g, o) and
  // cells [T, B, H, W, Hc]; otherwise both are empty.
  m.def(
      "conv_lstm_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
      "bool save_workspace) -> (Tensor y, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells)");
  // output_mask = which gradients to form: (grad_x; grad_h0 and grad_c0; grad_w_ih,
  // grad_w_hh and grad_bias); the others come back empty. grad_bias is the gradient of
  // b_ih and of b_hh alike.
  m.def(
      "conv_lstm_backward(Tensor? grad_y, Tensor? grad_h_n, Tensor? grad_c_n, Tensor x, Tensor h0, Tensor c0, "
      "Tensor w_ih, Tensor w_hh, Tensor y, Tensor gates, Tensor cells, bool[3] output_mask) -> "
      "(Tensor grad_x, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_ih, Tensor grad_w_hh, Tensor grad_bias)");
}

TORCH_LIBRARY_IMPL(fusednn, CPU, m) {
  m.impl("conv_lstm_forward", &fusednn::recurrent::forward_on<at::kCPU>);
  m.impl("conv_lstm_backward", &fusednn::recurrent::backward_on<at::kCPU>);
}

TORCH_LIBRARY_IMPL(fusednn, CUDA, m) {
  m.impl("conv_lstm_forward", &fusednn::recurrent::forward_on<at::kCUDA>);
  m.impl("conv_lstm_backward", &fusednn::recurrent::backward_on<at::kCUDA>);
}
