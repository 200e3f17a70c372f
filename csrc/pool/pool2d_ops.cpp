// Declarations of 2-D max, average and adaptive average pooling (see
// core/registry.h). Output sizes follow PyTorch's pooling_output_shape,
// ceil_mode included.
#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;
using registry::Resolution;
using registry::Shape;
using registry::shape_str;

// PyTorch's pooling output size along one axis: floor (or ceil) of the room
// over the stride, plus one; with ceil_mode the last window must start
// inside the input or its left padding.
int64_t pooled_size(int64_t in, int64_t kernel, int64_t pad, int64_t stride, int64_t dilation, bool ceil_mode) {
  const int64_t room = in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = (room >= 0 ? room / stride : -((-room + stride - 1) / stride)) + 1;
  if (ceil_mode && out > 0 && (out - 1) * stride >= in + pad) --out;
  return out;
}

// The image argument (x, or dx for a backward) is (N, C, H, W); binds OH
// and OW from the window and states the shapes of `outputs`.
void pool_rule(Resolution& r, const char* image, std::initializer_list<const char*> outputs, bool dilated) {
  const Shape& s = r.shape(image);
  const auto kernel = r.attr("kernel_size").pair, stride = r.attr("stride").pair, pad = r.attr("padding").pair;
  const std::array<int64_t, 2> dilation = dilated ? r.attr("dilation").pair : std::array<int64_t, 2>{1, 1};
  const bool ceil_mode = r.attr("ceil_mode").flag;
  if (s[2] == 0 || s[3] == 0) r.fail("'" + std::string(image) + "' has empty spatial dims " + shape_str(s));
  for (int i = 0; i < 2; ++i)  // PyTorch's limit: half the kernel (not the dilated extent)
    if (pad[i] > kernel[i] / 2)
      r.fail("padding " + shape_str({pad[0], pad[1]}) + " must be at most half of kernel_size " +
             shape_str({kernel[0], kernel[1]}));
  const int64_t oh = pooled_size(s[2], kernel[0], pad[0], stride[0], dilation[0], ceil_mode);
  const int64_t ow = pooled_size(s[3], kernel[1], pad[1], stride[1], dilation[1], ceil_mode);
  if (oh < 1 || ow < 1)
    r.fail("kernel_size " + shape_str({kernel[0], kernel[1]}) + " does not fit '" + image + "' " + shape_str(s) +
           " with padding " + shape_str({pad[0], pad[1]}) + ": output size " + shape_str({oh, ow}) +
           " is too small");
  if (s[2] * s[3] > (int64_t(1) << 24))
    r.fail("planes of more than 2^24 elements are not supported, got " + shape_str(s));
  r.bind("OH", oh);
  r.bind("OW", ow);
  for (const char* out : outputs) r.expect(out, Shape{s[0], s[1], oh, ow});
}

registry::OpBuilder& window(registry::OpBuilder& op) {
  return op.int_pair("kernel_size", 1, 1, "(h, w) or one int")
      .int_pair("stride", 1, 1, "(h, w) or one int (PyTorch's default, kernel_size, is the caller's)")
      .int_pair("padding", 0, 0, "(h, w) or one int, at most half the kernel")
      .flag("ceil_mode", false, "round the output size up (the last window starting inside)")
      .dims({"OH", "OW"})
      .work({"N", "C", "OH", "OW"});
}

registry::OpBuilder& max_window(registry::OpBuilder& op) {
  return op.apply(window).int_pair("dilation", 1, 1, "(h, w) or one int");
}

registry::OpBuilder& avg_window(registry::OpBuilder& op) {
  return op.apply(window)
      .flag("count_include_pad", true, "divide by the window cut at the padded edge, not by its inputs")
      .integer("divisor_override", 0, "divide every window by this when > 0")
      .check([](const Call& c) {
        if (c.integer("divisor_override") < 0)
          c.fail("divisor_override must be >= 0 (0: none), got " + std::to_string(c.integer("divisor_override")));
      });
}

// (planes, H, W, OH, OW) of a call; the image is x or dx.
struct Planes {
  int64_t planes, H, W, OH, OW;
  explicit Planes(const Call& c)
      : planes(c.dim("N") * c.dim("C")), H(c.dim("H")), W(c.dim("W")), OH(c.dim("OH")), OW(c.dim("OW")) {}
};

PYENGINE_OP("max_pool2d_forward", "pool",
            "2-D max pooling over (N, C, H, W), as PyTorch (ties: the first largest value; NaN wins); indices "
            "holds ih * W + iw of each maximum in its plane, as float, for the backward.")
    .output("y")        // (N, C, OH, OW)
    .output("indices")  // (N, C, OH, OW)
    .input("x", "(N, C, H, W)")
    .apply(max_window)
    .shape_rule([](Resolution& r) { pool_rule(r, "x", {"y", "indices"}, true); })
    .kernel([](const Call& c) {
      const Planes p(c);
      const auto k = c.pair("kernel_size"), s = c.pair("stride"), pad = c.pair("padding"), d = c.pair("dilation");
      PYENGINE_DISPATCH(max_pool2d_forward)(c.f32("y"), c.f32("indices"), c.f32("x"), p.planes, p.H, p.W, p.OH, p.OW,
                                            k[0], k[1], s[0], s[1], pad[0], pad[1], d[0], d[1]);
    });

PYENGINE_OP("max_pool2d_backward", "pool", "Gradient of max_pool2d_forward: dx[indices] += dy, plane by plane.")
    .grad("dx", "(N, C, H, W)")
    .grad_input("dy")    // (N, C, OH, OW)
    .input("indices")    // (N, C, OH, OW)
    .apply(max_window)
    .shape_rule([](Resolution& r) { pool_rule(r, "dx", {"dy", "indices"}, true); })
    .kernel([](const Call& c) {
      const Planes p(c);
      PYENGINE_DISPATCH(max_pool2d_backward)(c.f32("dx"), c.f32("dy"), c.f32("indices"), p.planes, p.H, p.W, p.OH,
                                             p.OW);
    });

PYENGINE_OP("avg_pool2d_forward", "pool",
            "2-D average pooling over (N, C, H, W), as PyTorch: count_include_pad, divisor_override, ceil_mode.")
    .output("y")  // (N, C, OH, OW)
    .input("x", "(N, C, H, W)")
    .apply(avg_window)
    .shape_rule([](Resolution& r) { pool_rule(r, "x", {"y"}, false); })
    .kernel([](const Call& c) {
      const Planes p(c);
      const auto k = c.pair("kernel_size"), s = c.pair("stride"), pad = c.pair("padding");
      PYENGINE_DISPATCH(avg_pool2d_forward)(c.f32("y"), c.f32("x"), p.planes, p.H, p.W, p.OH, p.OW, k[0], k[1], s[0],
                                            s[1], pad[0], pad[1], c.flag("count_include_pad"),
                                            c.integer("divisor_override"));
    });

PYENGINE_OP("avg_pool2d_backward", "pool", "Gradient of avg_pool2d_forward.")
    .grad("dx", "(N, C, H, W)")
    .grad_input("dy")  // (N, C, OH, OW)
    .apply(avg_window)
    .shape_rule([](Resolution& r) { pool_rule(r, "dx", {"dy"}, false); })
    .kernel([](const Call& c) {
      const Planes p(c);
      const auto k = c.pair("kernel_size"), s = c.pair("stride"), pad = c.pair("padding");
      PYENGINE_DISPATCH(avg_pool2d_backward)(c.f32("dx"), c.f32("dy"), p.planes, p.H, p.W, p.OH, p.OW, k[0], k[1],
                                             s[0], s[1], pad[0], pad[1], c.flag("count_include_pad"),
                                             c.integer("divisor_override"));
    });

// y (N, C, OH, OW) with (OH, OW) = output_size.
void adaptive_rule(Resolution& r, const char* image, const char* out) {
  const Shape& s = r.shape(image);
  if (s[2] == 0 || s[3] == 0) r.fail("'" + std::string(image) + "' has empty spatial dims " + shape_str(s));
  const auto size = r.attr("output_size").pair;
  r.bind("OH", size[0]);
  r.bind("OW", size[1]);
  r.expect(out, Shape{s[0], s[1], size[0], size[1]});
}

registry::OpBuilder& adaptive_geometry(registry::OpBuilder& op) {
  return op.int_pair("output_size", 1, 1, "(OH, OW) or one int; 1 is global pooling")
      .dims({"OH", "OW"})
      .work({"N", "C", "H", "W"});
}

PYENGINE_OP("adaptive_avg_pool2d_forward", "pool",
            "Adaptive 2-D average pooling to output_size, as PyTorch: output row oh averages input rows "
            "[floor(oh H / OH), ceil((oh + 1) H / OH)), columns alike.")
    .output("y")  // (N, C, OH, OW)
    .input("x", "(N, C, H, W)")
    .apply(adaptive_geometry)
    .shape_rule([](Resolution& r) { adaptive_rule(r, "x", "y"); })
    .kernel([](const Call& c) {
      const Planes p(c);
      PYENGINE_DISPATCH(adaptive_avg_pool2d_forward)(c.f32("y"), c.f32("x"), p.planes, p.H, p.W, p.OH, p.OW);
    });

PYENGINE_OP("adaptive_avg_pool2d_backward", "pool", "Gradient of adaptive_avg_pool2d_forward.")
    .grad("dx", "(N, C, H, W)")
    .grad_input("dy")  // (N, C, OH, OW)
    .apply(adaptive_geometry)
    .shape_rule([](Resolution& r) { adaptive_rule(r, "dx", "dy"); })
    .kernel([](const Call& c) {
      const Planes p(c);
      PYENGINE_DISPATCH(adaptive_avg_pool2d_backward)(c.f32("dx"), c.f32("dy"), p.planes, p.H, p.W, p.OH, p.OW);
    });

}  // namespace
}  // namespace pyengine
