// Sampling: aten::grid_sampler_2d (nn.functional.grid_sample on 4-d inputs) with bilinear or
// nearest interpolation, zeros or border padding, align_corners either way.
//
// Composed from engine layers: the grid's normalized coordinates are mapped to pixel
// coordinates (and clipped for border padding), each needed corner becomes a flat index
// n*H*W + y*W + x into the input laid out as [N*H*W, C], one Gather per corner reads the pixel
// rows, and the corners are weighted (zero weight outside the image for zeros padding) and
// summed. Coordinates are computed in f32.
#include <string>
#include <tuple>
#include <vector>

#include "ember/compiler/conversion.h"

namespace ember::compiler {
namespace {

using engine::DataType;
using engine::ElementWiseOp;
using engine::Shape;
using engine::Tensor;
using engine::UnaryOp;

/// grid_sampler_2d(input, grid, interpolation_mode, padding_mode, align_corners).
struct GridSampleArgs {
  enum { input = 0, grid = 1, interpolation_mode = 2, padding_mode = 3, align_corners = 4 };
};
enum Interpolation : int64_t { kBilinear = 0, kNearest = 1, kBicubic = 2 };
enum Padding : int64_t { kZeros = 0, kBorder = 1, kReflection = 2 };

Reason validate_grid_sample(const Node& node, const CompileSettings&) {
  const Value* x = node.arg_tensor(GridSampleArgs::input);
  const Value* grid = node.arg_tensor(GridSampleArgs::grid);
  if (!scalar_type_is_float(x->dtype()) || x->dtype() != grid->dtype()) {
    return "grid_sampler_2d needs float input and grid of one dtype";
  }
  if (x->rank() != 4 || grid->rank() != 4 || !(grid->shape()[3] == DimExpr(2))) {
    return "grid_sampler_2d needs input [N, C, H, W] and grid [N, Ho, Wo, 2]";
  }
  const int64_t mode = node.arg_int(GridSampleArgs::interpolation_mode);
  if (mode != kBilinear && mode != kNearest) {
    return "grid_sampler_2d supports bilinear and nearest interpolation (not bicubic)";
  }
  const int64_t padding = node.arg_int(GridSampleArgs::padding_mode);
  if (padding != kZeros && padding != kBorder) {
    return "grid_sampler_2d supports zeros and border padding (not reflection)";
  }
  return std::nullopt;
}

class GridSampler {
 public:
  GridSampler(ConversionContext& ctx, const Node& node) : ctx_(ctx), node_(node), net_(ctx.net()) {}

  void convert() {
    Tensor* x = ctx_.cast(ctx_.input(node_, GridSampleArgs::input), DataType::kF32);
    Tensor* grid = ctx_.cast(ctx_.input(node_, GridSampleArgs::grid), DataType::kF32);
    const bool align = node_.arg_bool(GridSampleArgs::align_corners);
    border_ = node_.arg_int(GridSampleArgs::padding_mode) == kBorder;
    const Shape& xs = x->shape();
    const Shape& gs = grid->shape();
    n_ = xs[0];
    c_ = xs[1];
    ho_ = gs[1];
    wo_ = gs[2];
    h_ = dim(x, 2, DataType::kF32);
    w_ = dim(x, 3, DataType::kF32);
    hi_ = dim(x, 2, DataType::kI32);
    wi_ = dim(x, 3, DataType::kI32);
    // [N, C, H, W] -> [N*H*W, C]: a flat pixel index selects one row of channels.
    rows_ = net_.add_transpose(x, {0, 2, 3, 1}, name())->output();
    rows_ = net_.add_reshape(rows_, {n_ * xs[2] * xs[3], c_}, name())->output();
    // n*H*W per batch element, [N, 1, 1].
    engine::FillParams ar;
    ar.op = engine::FillOp::kArange;
    ar.shape = {n_};
    ar.dtype = DataType::kI32;
    Tensor* batch =
        net_.add_reshape(net_.add_fill(ar, name())->output(), {n_, DimExpr(1), DimExpr(1)}, name())
            ->output();
    batch_base_ = ew(batch, ew(hi_, wi_, ElementWiseOp::kProd), ElementWiseOp::kProd);

    Tensor* ix = unnormalize(coordinate(grid, 0), w_, align);
    Tensor* iy = unnormalize(coordinate(grid, 1), h_, align);
    Tensor* out = nullptr;
    if (node_.arg_int(GridSampleArgs::interpolation_mode) == kNearest) {
      out = corner(net_.add_unary(ix, UnaryOp::kRound, name())->output(),
                   net_.add_unary(iy, UnaryOp::kRound, name())->output(), nullptr);
    } else {
      Tensor* x0 = net_.add_unary(ix, UnaryOp::kFloor, name())->output();
      Tensor* y0 = net_.add_unary(iy, UnaryOp::kFloor, name())->output();
      Tensor* x1 = ew(x0, one(), ElementWiseOp::kSum);
      Tensor* y1 = ew(y0, one(), ElementWiseOp::kSum);
      Tensor* wx1 = ew(ix, x0, ElementWiseOp::kSub);
      Tensor* wy1 = ew(iy, y0, ElementWiseOp::kSub);
      Tensor* wx0 = ew(x1, ix, ElementWiseOp::kSub);
      Tensor* wy0 = ew(y1, iy, ElementWiseOp::kSub);
      for (auto [cx, cy, wx, wy] : {std::tuple{x0, y0, wx0, wy0}, std::tuple{x1, y0, wx1, wy0},
                                    std::tuple{x0, y1, wx0, wy1}, std::tuple{x1, y1, wx1, wy1}}) {
        Tensor* v = corner(cx, cy, ew(wx, wy, ElementWiseOp::kProd));
        out = out == nullptr ? v : ew(out, v, ElementWiseOp::kSum);
      }
    }
    // [N, Ho, Wo, C] -> [N, C, Ho, Wo].
    ctx_.set_output(node_, 0, net_.add_transpose(out, {0, 3, 1, 2}, name())->output());
  }

 private:
  std::string name() { return ctx_.layer_name(node_); }
  Tensor* ew(Tensor* a, Tensor* b, ElementWiseOp op) {
    return net_.add_elementwise(a, b, op, name())->output();
  }
  Tensor* one() { return ctx_.scalar(1.0, DataType::kF32, 3); }

  /// Size of dim d of x as a rank-3 scalar of `dt` (from a Shape layer when symbolic).
  Tensor* dim(Tensor* x, int64_t d, DataType dt) {
    const DimExpr& e = x->shape()[d];
    if (e.is_constant()) return ctx_.scalar(static_cast<double>(e.constant()), dt, 3);
    Tensor* s = net_.add_shape(x, name())->output();
    s = net_.add_slice(s, {DimExpr(d)}, {DimExpr(1)}, {1}, name())->output();
    return ctx_.broadcast_rank(ctx_.cast(s, dt), 3);
  }

  /// grid[..., i] as [N, Ho, Wo].
  Tensor* coordinate(Tensor* grid, int64_t i) {
    Tensor* s = net_.add_slice(grid, {DimExpr(0), DimExpr(0), DimExpr(0), DimExpr(i)},
                               {n_, ho_, wo_, DimExpr(1)}, {1, 1, 1, 1}, name())
                    ->output();
    return net_.add_reshape(s, {n_, ho_, wo_}, name())->output();
  }

  /// [-1, 1] -> pixel coordinates: corners at -1/1 (align_corners) or pixel edges at -1/1;
  /// clipped to [0, size - 1] for border padding.
  Tensor* unnormalize(Tensor* g, Tensor* size, bool align) {
    Tensor* half = ctx_.scalar(0.5, DataType::kF32, 3);
    Tensor* p = ew(g, one(), ElementWiseOp::kSum);
    if (align) {
      p = ew(ew(p, half, ElementWiseOp::kProd), ew(size, one(), ElementWiseOp::kSub),
             ElementWiseOp::kProd);
    } else {
      p = ew(ew(ew(p, size, ElementWiseOp::kProd), one(), ElementWiseOp::kSub), half,
             ElementWiseOp::kProd);
    }
    if (border_) p = clip(p, size);
    return p;
  }

  Tensor* clip(Tensor* p, Tensor* size) {
    p = ew(p, ew(size, one(), ElementWiseOp::kSub), ElementWiseOp::kMin);
    return ew(p, ctx_.scalar(0.0, DataType::kF32, 3), ElementWiseOp::kMax);
  }

  /// The pixels at integral float coordinates (cx, cy) [N, Ho, Wo], times `weight` (or 1),
  /// zero outside the image: [N, Ho, Wo, C].
  Tensor* corner(Tensor* cx, Tensor* cy, Tensor* weight) {
    Tensor* zero = ctx_.scalar(0.0, DataType::kF32, 3);
    auto inside = [&](Tensor* c, Tensor* size) {
      Tensor* lo =
          net_.add_unary(ew(c, zero, ElementWiseOp::kLess), UnaryOp::kNot, name())->output();
      return ew(lo, ew(c, size, ElementWiseOp::kLess), ElementWiseOp::kAnd);
    };
    Tensor* valid = ew(inside(cx, w_), inside(cy, h_), ElementWiseOp::kAnd);
    Tensor* xi = ctx_.cast(clip(cx, w_), DataType::kI32);
    Tensor* yi = ctx_.cast(clip(cy, h_), DataType::kI32);
    Tensor* flat = ew(ew(ew(yi, wi_, ElementWiseOp::kProd), xi, ElementWiseOp::kSum), batch_base_,
                      ElementWiseOp::kSum);
    engine::GatherParams g;
    Tensor* v = net_.add_gather(rows_, flat, g, name())->output();  // [N, Ho, Wo, C]
    Tensor* wt = weight == nullptr ? one() : weight;
    wt = net_.add_select(valid, wt, zero, name())->output();
    wt = net_.add_reshape(wt, {n_, ho_, wo_, DimExpr(1)}, name())->output();
    return ew(v, wt, ElementWiseOp::kProd);
  }

  ConversionContext& ctx_;
  const Node& node_;
  engine::Network& net_;
  bool border_ = false;
  DimExpr n_, c_, ho_, wo_;
  Tensor* h_ = nullptr;
  Tensor* w_ = nullptr;
  Tensor* hi_ = nullptr;
  Tensor* wi_ = nullptr;
  Tensor* rows_ = nullptr;
  Tensor* batch_base_ = nullptr;
};

}  // namespace

EMBER_CONVERTER(grid_sampler_2d, {"aten::grid_sampler_2d"}, true, validate_grid_sample) {
  GridSampler(ctx, node).convert();
}

}  // namespace ember::compiler
