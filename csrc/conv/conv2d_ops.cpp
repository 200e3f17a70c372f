// Declarations of the 2-D convolution (see core/registry.h).
#include "core/dispatch.h"
#include "core/kernels.h"
#include "core/registry.h"

namespace pyengine {
namespace {

using registry::Call;
using registry::Resolution;
using registry::Shape;

// x (N, C, H, W) and weight (K, C / groups, R, S) give y (N, K, OH, OW)
// with OH = (H + 2 pad - dilation (R - 1) - 1) / stride + 1 >= 1, OW alike.
void conv_rule(Resolution& r, const char* y) {
  const Shape& sx = r.shape("x");
  const Shape& sw = r.shape("weight");
  const auto stride = r.attr("stride").pair, padding = r.attr("padding").pair, dilation = r.attr("dilation").pair;
  const int64_t groups = r.attr("groups").integer;
  // The patterns have checked the ranks.
  if (sx[1] == 0 || sx[2] == 0 || sx[3] == 0 || sw[0] == 0 || sw[1] == 0 || sw[2] == 0 || sw[3] == 0)
    r.fail("empty dims in x " + registry::shape_str(sx) + " or weight " + registry::shape_str(sw) +
           " (only N may be 0)");
  if (groups < 1) r.fail("groups must be >= 1, got " + std::to_string(groups));
  if (sx[1] % groups || sw[0] % groups)
    r.fail("groups=" + std::to_string(groups) + " must divide the input channels and the output channels, got x " +
           registry::shape_str(sx) + " and weight " + registry::shape_str(sw));
  if (sw[1] * groups != sx[1])
    r.fail("'weight' has shape " + registry::shape_str(sw) + ", expected " +
           registry::shape_str({sw[0], sx[1] / groups, sw[2], sw[3]}) + " for x " + registry::shape_str(sx) +
           " with groups=" + std::to_string(groups));
  int64_t out[2];
  for (int i = 0; i < 2; ++i) {  // in 128 bits: a large dilation times a large kernel
    const __int128 extent = static_cast<__int128>(dilation[i]) * (sw[2 + i] - 1) + 1;
    const __int128 room = static_cast<__int128>(sx[2 + i]) + 2 * padding[i] - extent;
    out[i] = room < 0 ? 0 : static_cast<int64_t>(room / stride[i] + 1);
  }
  if (out[0] < 1 || out[1] < 1)
    r.fail("weight " + registry::shape_str(sw) + " with dilation " + registry::shape_str({dilation[0], dilation[1]}) +
           " does not fit x " + registry::shape_str(sx) + " with padding " +
           registry::shape_str({padding[0], padding[1]}) + ": no output");
  r.bind("OH", out[0]);
  r.bind("OW", out[1]);
  r.expect(y, Shape{sx[0], sw[0], out[0], out[1]});
}

void conv_kernel_args(const Call& c, int64_t* d) {
  const auto stride = c.pair("stride"), padding = c.pair("padding"), dilation = c.pair("dilation");
  const int64_t values[] = {c.dim("N"), c.dim("C"), c.dim("H"), c.dim("W"), c.dim("K"), c.dim("R"), c.dim("S"),
                            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                            c.integer("groups")};
  std::copy(std::begin(values), std::end(values), d);
}

// The geometry both kernels share, and the work (multiply-adds) it gives.
registry::OpBuilder& conv_geometry(registry::OpBuilder& op) {
  return op.int_pair("stride", 1, 1, "(h, w) or one int")
      .int_pair("padding", 0, 0, "(h, w) or one int, zeros")
      .int_pair("dilation", 1, 1, "(h, w) or one int")
      .integer("groups", 1, "input and output channels in this many groups (C: depthwise)")
      .dims({"OH", "OW"})
      .work({"N", "K", "OH", "OW", "CG", "R", "S"});
}

PYENGINE_OP("conv2d_forward", "conv",
            "2-D convolution (cross-correlation, as in PyTorch), NCHW, zero padding, in groups: y[n, k] = "
            "activation(bias[k] + sum over c < C / groups, r, s of weight[k, c, r, s] * x[n, g * C / groups + c, "
            "oh*stride - pad + r*dilation, ...]) for k in group g; the activation is applied in the pass that "
            "writes y.")
    .output("y")                            // (N, K, OH, OW)
    .input("x", "(N, C, H, W)")
    .input("weight", "(K, CG, R, S)")
    .optional_input("bias", "(K)")
    .apply(conv_geometry)
    .code("activation", registry::activation_enum(), 0, "applied with the bias, in the pass that writes y")
    .shape_rule([](Resolution& r) { conv_rule(r, "y"); })
    .kernel([](const Call& c) {
      int64_t d[14];
      conv_kernel_args(c, d);
      PYENGINE_DISPATCH(conv2d_forward)(c.f32("y"), c.f32("x"), c.f32("weight"), c.f32("bias"),
                                        static_cast<Activation>(c.code("activation")), d[0], d[1], d[2], d[3],
                                        d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12], d[13]);
    });

PYENGINE_OP("conv2d_backward", "conv", "Gradients of conv2d_forward.")
    .optional_grad("dx", "(N, C, H, W)")
    .optional_grad("dweight", "(K, CG, R, S)")
    .optional_grad("dbias", "(K)")
    .grad_input("dy")  // (N, K, OH, OW)
    .input("x", "(N, C, H, W)")
    .input("weight", "(K, CG, R, S)")
    .apply(conv_geometry)
    .shape_rule([](Resolution& r) { conv_rule(r, "dy"); })
    .kernel([](const Call& c) {
      int64_t d[14];
      conv_kernel_args(c, d);
      PYENGINE_DISPATCH(conv2d_backward)(c.f32("dx"), c.f32("dweight"), c.f32("dbias"), c.f32("dy"), c.f32("x"),
                                         c.f32("weight"), d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8],
                                         d[9], d[10], d[11], d[12], d[13]);
    });

}  // namespace
}  // namespace pyengine
