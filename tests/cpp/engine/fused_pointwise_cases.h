// Pointwise chains shared by the FusedPointwise suites (fused_pointwise_test.cpp on the CPU,
// cuda_fused_pointwise_test.cpp on the GPU): networks, their inputs, and what the
// fuse_pointwise pass makes of them.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "backends/semantics/fused_pointwise.h"
#include "ember/engine/network.h"
#include "test_util.h"

namespace ember::engine::fused_cases {

using test::TestTensor;

const std::vector<DataType> kFloatTypes = {DataType::kF32, DataType::kF16, DataType::kBF16};

inline Tensor* scalar(Network& net, DataType dt, float v, const std::string& name) {
  const TestTensor t = TestTensor::floats(dt, {1}, {v});
  return net.add_constant(Weights::copy(dt, {1}, t.bytes.data()), name)->output();
}

inline Tensor* constant(Network& net, DataType dt, std::vector<int64_t> dims, uint32_t seed,
                 const std::string& name) {
  const TestTensor t = TestTensor::random(dt, dims, seed);
  return net.add_constant(Weights::copy(dt, dims, t.bytes.data()), name)->output();
}

inline int count(const Network& net, LayerKind kind) {
  int n = 0;
  for (const Layer* l : net.layers()) n += l->kind() == kind ? 1 : 0;
  return n;
}

/// A chain: a network and inputs for it.
struct Chain {
  std::string name;
  std::function<void(Network&, DataType)> build;
  std::vector<std::vector<int64_t>> input_dims;
  int fused_layers;  ///< FusedPointwise layers the pass makes
  int pointwise_left;  ///< Activation/ElementWise/Unary/Cast layers left after the pass
  int reduce_left = 0;  ///< Reduce layers left after the pass
};

/// A Reduce layer over the last dim of `x`, kept as size 1.
inline Tensor* row_reduce(Network& net, Tensor* x, ReduceOp op, const std::string& name) {
  ReduceParams p;
  p.op = op;
  p.axes = {static_cast<int64_t>(x->rank()) - 1};
  p.keep_dims = true;
  return net.add_layer(p, {x}, name)->output();
}

/// Appends the step `op`(value a, value b) to `p` (values: the inputs, then the steps before).
inline void append_elementwise(FusedPointwiseParams& p, ElementWiseOp op, int a, int b) {
  semantics::FusedStep s;
  s.family = FusedOpFamily::kElementWise;
  s.code = static_cast<int>(op);
  s.operands[0] = a;
  s.operands[1] = b;
  semantics::fused_append(p, s);
}

/// RoPE on a transposed [B, L, H, E] input (B = 2, L = 3): x' cos + gather(x', table) sin with
/// x' the [B, H, L, E] transpose, the table rotate_half's (E / 2 .. E - 1, 0 .. E / 2 - 1) or
/// reversed.
inline void rope_of(Network& net, DataType dt, Tensor* x, bool reversed) {
  const int64_t e = x->shape().back().constant();
  Tensor* c = net.add_input("cos", dt, {3, e});
  Tensor* s = net.add_input("sin", dt, {3, e});
  ShuffleParams tp;
  tp.first_transpose = {0, 2, 1, 3};
  Tensor* q = net.add_layer(tp, {x}, "transpose")->output();
  std::vector<int32_t> idx(static_cast<size_t>(e));
  for (int64_t j = 0; j < e; ++j) {
    idx[static_cast<size_t>(j)] = static_cast<int32_t>(reversed ? e - 1 - j : (j + e / 2) % e);
  }
  Tensor* ix = net.add_constant(Weights::copy(DataType::kI32, {e}, idx.data()), "idx")->output();
  GatherParams gp;
  gp.axis = 3;
  Tensor* rot = net.add_gather(q, ix, gp, "rotate")->output();
  Tensor* a = net.add_elementwise(q, c, ElementWiseOp::kProd, "q_cos")->output();
  Tensor* b = net.add_elementwise(rot, s, ElementWiseOp::kProd, "rot_sin")->output();
  net.mark_output(net.add_elementwise(a, b, ElementWiseOp::kSum, "rope")->output(), "out");
}

inline void rope(Network& net, DataType dt, int64_t heads, int64_t e, bool reversed) {
  rope_of(net, dt, net.add_input("x", dt, {2, 3, heads, e}), reversed);
}

inline Tensor* last_dim_slice(Network& net, Tensor* x, int64_t start, int64_t size,
                              const std::string& name);

/// RoPE on the part y[..., start : start + heads * e] of a merged q/k product y [2, 3, width],
/// reshaped into heads of e (merge_sibling_products' parts read as heads).
inline void rope_on_part(Network& net, DataType dt, int64_t width, int64_t start, int64_t heads,
                         int64_t e) {
  Tensor* y = net.add_input("y", dt, {2, 3, width});
  Tensor* part = last_dim_slice(net, y, start, heads * e, "part");
  rope_of(net, dt,
          net.add_reshape(part, {DimExpr(2), DimExpr(3), DimExpr(heads), DimExpr(e)}, "heads")
              ->output(),
          /*reversed=*/false);
}

/// x[..., start : start + size] (every other dim whole).
inline Tensor* last_dim_slice(Network& net, Tensor* x, int64_t start, int64_t size,
                              const std::string& name) {
  const Shape& xs = x->shape();
  Shape from(xs.size(), DimExpr(0)), sizes = xs;
  from.back() = DimExpr(start);
  sizes.back() = DimExpr(size);
  return net.add_slice(x, from, sizes, std::vector<int64_t>(xs.size(), 1), name)->output();
}

/// silu(y[..., g0 : g0 + n]) * y[..., u0 : u0 + n] over y of `dims`: SwiGLU on the two parts
/// of a merged product (merge_sibling_products).
inline void gated_parts(Network& net, DataType dt, std::vector<int64_t> dims, int64_t g0,
                        int64_t u0, int64_t n) {
  Shape shape;
  for (int64_t d : dims) shape.push_back(DimExpr(d));
  Tensor* y = net.add_input("y", dt, shape);
  Tensor* g = last_dim_slice(net, y, g0, n, "gate_part");
  Tensor* u = last_dim_slice(net, y, u0, n, "up_part");
  g = net.add_activation(g, ActivationType::kSilu, 0, 0, "silu")->output();
  net.mark_output(net.add_elementwise(g, u, ElementWiseOp::kProd, "gated")->output(), "out");
}

inline std::vector<Chain> chains() {
  return {
      {"add+relu",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {2, 3, 8});
         Tensor* y = net.add_input("y", dt, {2, 3, 8});
         Tensor* s = net.add_elementwise(x, y, ElementWiseOp::kSum, "add")->output();
         net.mark_output(net.add_activation(s, ActivationType::kRelu, 0, 0, "relu")->output(), "out");
       },
       {{2, 3, 8}, {2, 3, 8}}, 1, 0},
      {"mul+add+gelu (erf, decomposed, with inline scalars)",
       [](Network& net, DataType dt) {
         // 0.5 * x * (1 + erf(x * 0.70710678)), as a traced GELU arrives
         Tensor* x = net.add_input("x", dt, {4, 16});
         Tensor* b = net.add_input("b", dt, {16});
         Tensor* h = net.add_elementwise(x, b, ElementWiseOp::kSum, "bias")->output();
         Tensor* t = net.add_elementwise(h, scalar(net, dt, 0.70710678f, "c1"),
                                         ElementWiseOp::kProd, "scale")->output();
         t = net.add_unary(t, UnaryOp::kErf, "erf")->output();
         t = net.add_elementwise(t, scalar(net, dt, 1.0f, "one"), ElementWiseOp::kSum, "plus1")
                 ->output();
         Tensor* hh = net.add_elementwise(h, scalar(net, dt, 0.5f, "half"), ElementWiseOp::kProd,
                                          "halve")->output();
         net.mark_output(net.add_elementwise(hh, t, ElementWiseOp::kProd, "gelu")->output(), "out");
       },
       {{4, 16}, {16}}, 1, 0},
      {"cast chain",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {3, 10});
         Tensor* y = net.add_input("y", DataType::kF32, {3, 10});
         Tensor* c = net.add_cast(x, DataType::kF32, "up")->output();
         c = net.add_elementwise(c, y, ElementWiseOp::kSub, "sub")->output();
         c = net.add_activation(c, ActivationType::kSigmoid, 0, 0, "sigmoid")->output();
         c = net.add_cast(c, dt, "down")->output();
         c = net.add_unary(c, UnaryOp::kExp, "exp")->output();
         net.mark_output(net.add_cast(c, DataType::kBF16, "to_bf16")->output(), "out");
       },
       {{3, 10}, {3, 10}}, 1, 0},
      {"broadcasting inputs and a constant",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {2, 4, 6});
         Tensor* g = net.add_input("g", dt, {4, 1});
         Tensor* t = net.add_elementwise(x, constant(net, dt, {6}, 5, "bias"), ElementWiseOp::kSum,
                                         "add_bias")->output();
         t = net.add_elementwise(t, g, ElementWiseOp::kProd, "gate")->output();
         t = net.add_activation(t, ActivationType::kSilu, 0, 0, "silu")->output();
         t = net.add_activation(t, ActivationType::kClip, -0.5, 0.75, "clip")->output();
         net.mark_output(net.add_elementwise(t, x, ElementWiseOp::kMax, "max")->output(), "out");
       },
       {{2, 4, 6}, {4, 1}}, 1, 0},
      {"broadcasts in runs that cross the interpreter's blocks",
       [](Network& net, DataType dt) {
         // 3 * 37 * 29 elements: blocks of 512 start inside rows; g broadcasts along the last
         // dim, b along the first two, h along the middle one.
         Tensor* x = net.add_input("x", dt, {3, 37, 29});
         Tensor* g = net.add_input("g", dt, {37, 1});
         Tensor* b = net.add_input("b", dt, {29});
         Tensor* h = net.add_input("h", dt, {3, 1, 29});
         Tensor* t = net.add_elementwise(x, g, ElementWiseOp::kProd, "gate")->output();
         t = net.add_elementwise(t, b, ElementWiseOp::kSub, "shift")->output();
         t = net.add_elementwise(h, t, ElementWiseOp::kMin, "min")->output();
         net.mark_output(net.add_activation(t, ActivationType::kElu, 0.7, 0, "elu")->output(), "out");
       },
       {{3, 37, 29}, {37, 1}, {29}, {3, 1, 29}}, 1, 0},
      {"a result read outside becomes a second output",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {5, 8});
         Tensor* y = net.add_input("y", dt, {5, 8});
         Tensor* s = net.add_elementwise(x, y, ElementWiseOp::kSum, "residual")->output();
         Tensor* t = net.add_activation(s, ActivationType::kTanh, 0, 0, "tanh")->output();
         net.mark_output(net.add_elementwise(t, s, ElementWiseOp::kDiv, "div")->output(), "out");
         NormalizationParams p;
         p.axis = 1;
         p.epsilon = 1e-5;
         net.mark_output(net.add_normalization(t, nullptr, nullptr, p, "norm")->output(), "norm");
       },
       {{5, 8}, {5, 8}}, 1, 0},
      {"a path out and back in splits the group before the re-entry",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {3, 7});
         Tensor* q = net.add_unary(x, UnaryOp::kNeg, "neg")->output();
         Tensor* p1 = net.add_activation(q, ActivationType::kRelu, 0, 0, "relu")->output();
         Tensor* sm = net.add_softmax(p1, 1, false, "softmax")->output();
         net.mark_output(net.add_elementwise(q, sm, ElementWiseOp::kSum, "add")->output(), "out");
       },
       {{3, 7}}, 1, 1},
      {"an intermediate network output is one of the fused layer's outputs",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {4, 4});
         Tensor* a = net.add_unary(x, UnaryOp::kAbs, "abs")->output();
         net.mark_output(a, "abs");
         Tensor* b = net.add_unary(a, UnaryOp::kSqrt, "sqrt")->output();
         b = net.add_unary(b, UnaryOp::kNeg, "neg")->output();
         net.mark_output(b, "out");
       },
       {{4, 4}}, 1, 0},
      {"isinf and isnan as bools cast to numbers (T5's isinf(x).any() before its reduction)",
       [](Network& net, DataType dt) {
         // exp(100 x) overflows to inf for x > 0.89 in every float type; inf - inf is NaN.
         Tensor* x = net.add_input("x", dt, {4, 8});
         Tensor* e = net.add_elementwise(x, scalar(net, dt, 100.0f, "hundred"),
                                         ElementWiseOp::kProd, "scale")->output();
         e = net.add_unary(e, UnaryOp::kExp, "exp")->output();
         Tensor* inf = net.add_unary(e, UnaryOp::kIsInf, "isinf")->output();
         Tensor* d = net.add_elementwise(e, e, ElementWiseOp::kSub, "sub")->output();
         Tensor* nan = net.add_unary(d, UnaryOp::kIsNan, "isnan")->output();
         Tensor* a = net.add_cast(inf, DataType::kF32, "inf_f32")->output();
         Tensor* b = net.add_cast(nan, DataType::kF32, "nan_f32")->output();
         b = net.add_elementwise(b, b, ElementWiseOp::kSum, "twice")->output();
         net.mark_output(net.add_elementwise(a, b, ElementWiseOp::kSum, "count")->output(), "out");
       },
       {{4, 8}}, 1, 0},
      {"a sum of 20 inputs, more than one kernel takes, fuses as two halves",
       [](Network& net, DataType dt) {
         Tensor* acc = net.add_input("x0", dt, {3, 4});
         for (int k = 1; k < 20; ++k) {
           Tensor* x = net.add_input("x" + std::to_string(k), dt, {3, 4});
           acc = net.add_elementwise(acc, x, ElementWiseOp::kSum, "add" + std::to_string(k))
                     ->output();
         }
         net.mark_output(acc, "out");
       },
       std::vector<std::vector<int64_t>>(20, std::vector<int64_t>{3, 4}), 2, 0},
      {"a result a matmul also reads is stored and still computed with in the group",
       [](Network& net, DataType dt) {
         // T5's f16 clamp, then the RMSNorm that reads it, while the clamped value also goes to
         // the next residual (here a product with a constant matrix).
         Tensor* x = net.add_input("x", dt, {3, 8});
         Tensor* c = net.add_activation(x, ActivationType::kClip, -1.5f, 1.5f, "clamp")->output();
         Tensor* sq = net.add_elementwise(c, c, ElementWiseOp::kProd, "square")->output();
         Tensor* r = row_reduce(net, sq, ReduceOp::kAvg, "mean");
         r = net.add_unary(r, UnaryOp::kRsqrt, "rsqrt")->output();
         Tensor* y = net.add_elementwise(c, r, ElementWiseOp::kProd, "normalize")->output();
         Tensor* w = net.add_input("w", dt, {8, 8});
         net.mark_output(net.add_matrix_multiply(c, false, w, false, "next")->output(), "next");
         net.mark_output(y, "out");
       },
       {{3, 8}, {8, 8}}, 1, 0, 0},
      // Row reductions (kReduce steps): the norm and softmax patterns models export.
      {"RMSNorm as T5 writes it: an f32 island around a mean over the last dim",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {3, 5, 24});
         Tensor* w = net.add_input("w", dt, {24});
         Tensor* xf = net.add_cast(x, DataType::kF32, "to_f32")->output();
         Tensor* sq = net.add_elementwise(xf, scalar(net, DataType::kF32, 2.0f, "two"),
                                          ElementWiseOp::kPow, "pow")->output();
         Tensor* var = row_reduce(net, sq, ReduceOp::kAvg, "mean");
         Tensor* r = net.add_elementwise(var, scalar(net, DataType::kF32, 1e-6f, "eps"),
                                         ElementWiseOp::kSum, "add_eps")->output();
         r = net.add_unary(r, UnaryOp::kRsqrt, "rsqrt")->output();
         Tensor* y = net.add_elementwise(xf, r, ElementWiseOp::kProd, "normalize")->output();
         y = net.add_cast(y, dt, "to_dt")->output();
         net.mark_output(net.add_elementwise(w, y, ElementWiseOp::kProd, "scale")->output(), "out");
       },
       {{3, 5, 24}, {24}}, 1, 0, 0},
      {"layer norm from two means, rows not a multiple of four nor of the CPU's block",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {4, 7, 33});
         Tensor* g = net.add_input("g", dt, {33});
         Tensor* b = net.add_input("b", dt, {33});
         Tensor* mu = row_reduce(net, x, ReduceOp::kAvg, "mean");
         Tensor* d = net.add_elementwise(x, mu, ElementWiseOp::kSub, "center")->output();
         Tensor* d2 = net.add_elementwise(d, d, ElementWiseOp::kProd, "square")->output();
         Tensor* var = row_reduce(net, d2, ReduceOp::kAvg, "var");
         Tensor* r = net.add_elementwise(var, scalar(net, dt, 1e-5f, "eps"), ElementWiseOp::kSum,
                                         "add_eps")->output();
         r = net.add_unary(r, UnaryOp::kSqrt, "sqrt")->output();
         Tensor* y = net.add_elementwise(d, r, ElementWiseOp::kDiv, "normalize")->output();
         y = net.add_elementwise(y, g, ElementWiseOp::kProd, "gamma")->output();
         net.mark_output(net.add_elementwise(y, b, ElementWiseOp::kSum, "beta")->output(), "out");
       },
       {{4, 7, 33}, {33}, {33}}, 1, 0, 0},
      {"softmax from max and sum over rows longer than the CPU's block",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {3, 600});
         Tensor* m = row_reduce(net, x, ReduceOp::kMax, "max");
         Tensor* e = net.add_elementwise(x, m, ElementWiseOp::kSub, "shift")->output();
         e = net.add_unary(e, UnaryOp::kExp, "exp")->output();
         Tensor* s = row_reduce(net, e, ReduceOp::kSum, "sum");
         net.mark_output(net.add_elementwise(e, s, ElementWiseOp::kDiv, "div")->output(), "out");
       },
       {{3, 600}}, 1, 0, 0},
      {"min and product rows, the reduction's input read outside too",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {6, 5});
         Tensor* t = net.add_activation(x, ActivationType::kSigmoid, 0, 0, "sigmoid")->output();
         Tensor* lo = row_reduce(net, t, ReduceOp::kMin, "min");
         Tensor* pr = row_reduce(net, t, ReduceOp::kProd, "prod");
         Tensor* y = net.add_elementwise(t, lo, ElementWiseOp::kSub, "sub_min")->output();
         net.mark_output(net.add_elementwise(y, pr, ElementWiseOp::kSum, "add_prod")->output(),
                         "out");
         net.mark_output(t, "sigmoid");
       },
       {{6, 5}}, 1, 0, 0},
      {"a row value read outside leaves its reduction unfused",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {4, 9});
         Tensor* sq = net.add_elementwise(x, x, ElementWiseOp::kProd, "square")->output();
         Tensor* ms = row_reduce(net, sq, ReduceOp::kAvg, "mean");
         net.mark_output(ms, "mean_square");
         Tensor* r = net.add_unary(ms, UnaryOp::kRsqrt, "rsqrt")->output();
         net.mark_output(net.add_elementwise(x, r, ElementWiseOp::kProd, "normalize")->output(),
                         "out");
       },
       {{4, 9}}, 1, 1, 1},
      // Input views: a transpose and a last-dim gather read in place instead of copied.
      {"RoPE on a transposed tensor: the transpose and the rotate_half gather become views",
       [](Network& net, DataType dt) { rope(net, dt, 4, 8, /*reversed=*/false); },
       {{2, 3, 4, 8}, {3, 8}, {3, 8}}, 1, 0},
      // Qwen2's RoPE: head dim 64, rotate_half's table keeps runs of 4 together, so the CUDA
      // back end reads the gathered input as vectors (the strided vectorized path); a reversed
      // table does not, and takes the generic path there.
      {"RoPE over a head dim of 64 (a gather that keeps vectors)",
       [](Network& net, DataType dt) { rope(net, dt, 2, 64, /*reversed=*/false); },
       {{2, 3, 2, 64}, {3, 64}, {3, 64}}, 1, 0},
      {"a reversed last-dim gather (no vectors)",
       [](Network& net, DataType dt) { rope(net, dt, 2, 64, /*reversed=*/true); },
       {{2, 3, 2, 64}, {3, 64}, {3, 64}}, 1, 0},
      // Last-dim slices (the parts of a merged product) are gathers by one run: read in place,
      // through the vectorized strided path where the parts are whole vectors.
      {"SwiGLU over the two parts of one tensor: last-dim slices read in place",
       [](Network& net, DataType dt) { gated_parts(net, dt, {3, 5, 32}, 0, 16, 16); },
       {{3, 5, 32}}, 1, 0},
      {"slice views at unaligned offsets",
       [](Network& net, DataType dt) { gated_parts(net, dt, {2, 3, 13}, 7, 1, 6); },
       {{2, 3, 13}}, 1, 0},
      {"a lone product of two last-dim slices",
       [](Network& net, DataType dt) {
         Tensor* y = net.add_input("y", dt, {4, 24});
         Tensor* a = last_dim_slice(net, y, 0, 8, "a");
         Tensor* b = last_dim_slice(net, y, 16, 8, "b");
         net.mark_output(net.add_elementwise(a, b, ElementWiseOp::kProd, "ab")->output(), "out");
       },
       {{4, 24}}, 1, 0},
      {"a row program over a last-dim slice",
       [](Network& net, DataType dt) {
         Tensor* y = net.add_input("y", dt, {4, 12});
         Tensor* t = last_dim_slice(net, y, 3, 8, "part");
         Tensor* mu = row_reduce(net, t, ReduceOp::kAvg, "mean");
         net.mark_output(net.add_elementwise(t, mu, ElementWiseOp::kSub, "center")->output(),
                         "out");
       },
       {{4, 12}}, 1, 0, 0},
      // A reshape into heads of a last-dim slice (q or k of a merged product, before RoPE):
      // read as a slice of the whole tensor's heads, on the vectorized path where e allows.
      {"RoPE on a part reshaped into heads (a slice of the rows of heads)",
       [](Network& net, DataType dt) { rope_on_part(net, dt, 40, 16, 3, 8); },
       {{2, 3, 40}, {3, 8}, {3, 8}}, 1, 0},
      {"RoPE over a head dim of 64 on a part reshaped into heads",
       [](Network& net, DataType dt) { rope_on_part(net, dt, 256, 64, 2, 64); },
       {{2, 3, 256}, {3, 64}, {3, 64}}, 1, 0},
      {"views in a row program: a layer norm over a transposed input",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {3, 5, 6});
         ShuffleParams tp;
         tp.first_transpose = {1, 0, 2};
         Tensor* t = net.add_layer(tp, {x}, "transpose")->output();  // [5, 3, 6]
         Tensor* mu = row_reduce(net, t, ReduceOp::kAvg, "mean");
         Tensor* d = net.add_elementwise(t, mu, ElementWiseOp::kSub, "center")->output();
         Tensor* d2 = net.add_elementwise(d, d, ElementWiseOp::kProd, "square")->output();
         Tensor* var = row_reduce(net, d2, ReduceOp::kAvg, "var");
         Tensor* r = net.add_unary(var, UnaryOp::kSqrt, "sqrt")->output();
         net.mark_output(net.add_elementwise(d, r, ElementWiseOp::kDiv, "normalize")->output(),
                         "out");
       },
       {{3, 5, 6}}, 1, 0, 0},
      {"a transpose read elsewhere too stays a copy",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {3, 4, 5});
         ShuffleParams tp;
         tp.first_transpose = {1, 0, 2};
         Tensor* t = net.add_layer(tp, {x}, "transpose")->output();
         net.mark_output(t, "transposed");
         Tensor* e = net.add_unary(t, UnaryOp::kExp, "exp")->output();
         net.mark_output(net.add_unary(e, UnaryOp::kNeg, "neg")->output(), "out");
       },
       {{3, 4, 5}}, 1, 0},
      {"a transpose that moves the last dim stays a (tiled) copy",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {2, 3, 5});
         ShuffleParams tp;
         tp.first_transpose = {0, 2, 1};
         Tensor* t = net.add_layer(tp, {x}, "to_nchw")->output();
         Tensor* e = net.add_unary(t, UnaryOp::kExp, "exp")->output();
         net.mark_output(net.add_unary(e, UnaryOp::kNeg, "neg")->output(), "out");
       },
       {{2, 3, 5}}, 1, 0},
      // Bools, integers and selects on a scalar: T5's f16 clamp, where(any(isinf(x)), A, B).
      {"an integer count, a bool, a select and casts on a scalar fold into the clamp",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {2, 3, 8});
         Tensor* count = net.add_input("count", DataType::kI32, {});
         Tensor* any = net.add_cast(count, DataType::kBool, "any")->output();
         auto f32 = [&](float v, const std::string& name) {
           return net.add_constant(Weights::copy(DataType::kF32, {}, &v), name)->output();
         };
         Tensor* c = net.add_layer(SelectParams{}, {any, f32(1.0f, "low"), f32(1.5f, "high")},
                                   "where")->output();
         Tensor* lo = net.add_cast(net.add_unary(c, UnaryOp::kNeg, "neg")->output(), dt, "lo")
                          ->output();
         Tensor* hi = net.add_cast(c, dt, "hi")->output();
         Tensor* y = net.add_elementwise(x, lo, ElementWiseOp::kMax, "clamp_min")->output();
         net.mark_output(net.add_elementwise(y, hi, ElementWiseOp::kMin, "clamp_max")->output(),
                         "out");
       },
       {{2, 3, 8}, {}}, 1, 0},
      {"a row group that cannot be one layer falls back to its plain chains",
       [](Network& net, DataType dt) {
         // The row value t is a network output, so {exp, abs.., sum, log..} cannot be one
         // layer; the chains exp -> abs -> sqrt -> neg and log -> abs -> sqrt fuse on their
         // own (exp's result stored for the Reduce).
         Tensor* x = net.add_input("x", dt, {4, 8});
         Tensor* z = net.add_unary(x, UnaryOp::kExp, "z")->output();
         Tensor* c = net.add_unary(z, UnaryOp::kAbs, "a")->output();
         c = net.add_unary(c, UnaryOp::kSqrt, "b")->output();
         net.mark_output(net.add_unary(c, UnaryOp::kNeg, "c")->output(), "c");
         Tensor* t = row_reduce(net, z, ReduceOp::kSum, "r");
         t = net.add_unary(t, UnaryOp::kLog, "p")->output();
         t = net.add_unary(t, UnaryOp::kAbs, "q")->output();
         net.mark_output(net.add_unary(t, UnaryOp::kSqrt, "t")->output(), "t");
       },
       {{4, 8}}, 2, 0, 1},
      {"a reduction over another axis stays a Reduce layer",
       [](Network& net, DataType dt) {
         Tensor* x = net.add_input("x", dt, {5, 8});
         ReduceParams p;
         p.op = ReduceOp::kSum;
         p.axes = {0};
         p.keep_dims = true;
         Tensor* s = net.add_layer(p, {x}, "sum0")->output();
         Tensor* y = net.add_elementwise(x, s, ElementWiseOp::kDiv, "div")->output();
         net.mark_output(net.add_unary(y, UnaryOp::kExp, "exp")->output(), "out");
       },
       {{5, 8}}, 1, 0, 1},
  };
}

/// Random inputs for a chain's network, in [-2, 2) (integers: whole numbers there).
inline std::vector<TestTensor> inputs_for(const Network& net, const Chain& c) {
  std::vector<TestTensor> ins;
  for (size_t i = 0; i < c.input_dims.size(); ++i) {
    ins.push_back(TestTensor::random(net.inputs()[i]->dtype(), c.input_dims[i],
                                     11 + static_cast<uint32_t>(i), -2.0f, 2.0f));
  }
  return ins;
}

}  // namespace ember::engine::fused_cases
