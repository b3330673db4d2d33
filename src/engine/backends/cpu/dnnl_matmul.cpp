// MatrixMultiply through oneDNN's matmul (see dnnl_matmul.h).
//
// One primitive per layer and shape. The operands are described to oneDNN in the layout they
// already have (a transposed operand is a strided view, never copied), numpy broadcasting of
// the batch dims is oneDNN's own (a size-1 batch dim broadcasts), and when b has no batch and
// a is not transposed, a's batch folds into the rows of one 2-d product (a linear layer over
// [batch, seq, features] is one GEMM). The epilogue: the scale as oneDNN's output scale, the
// bias as the primitive's bias (or, with a scale, as a binary add after it: the scale
// multiplies the product, not the bias), the residual as a sum post-op on a destination
// preloaded with it (safe when the arena gives the output the residual's memory), and the
// activation as an eltwise post-op for f32 outputs.
#include "backends/cpu/dnnl_matmul.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#ifdef EMBER_WITH_DNNL
#include "backends/cpu/dnnl_common.h"
#endif

namespace ember::engine::cpu {

#ifdef EMBER_WITH_DNNL

namespace {

using dnnl::memory;
constexpr auto kF32 = memory::data_type::f32;

/// The prepared product of one layer and shape.
struct DnnlMatmul final : KernelCache::Entry {
  dnnl::matmul prim;
  memory::desc a_md, b_md, bias_md, dst_md;
  bool bias_as_binary = false;  // with an output scale, the bias is a binary add post-op
  bool activation_fused = false;
};

/// Row-major strides of `dims` (the strides of a size-1 dim do not matter to oneDNN).
memory::dims plain_strides(const memory::dims& dims) {
  memory::dims s(dims.size(), 1);
  for (size_t i = dims.size(); i-- > 1;) s[i - 1] = s[i] * std::max<int64_t>(dims[i], 1);
  return s;
}

/// The memory desc of a stored [..., rows, cols] operand used as [..., cols, rows] when
/// `transposed`, padded with leading size-1 dims to `rank`.
memory::desc operand_md(const std::vector<int64_t>& stored, bool transposed, size_t rank) {
  memory::dims dims(rank - stored.size(), 1);
  dims.insert(dims.end(), stored.begin(), stored.end());
  memory::dims strides = plain_strides(dims);
  if (transposed) {
    std::swap(dims[rank - 1], dims[rank - 2]);
    std::swap(strides[rank - 1], strides[rank - 2]);
  }
  return memory::desc(dims, kF32, strides);
}

std::string problem_key(const HostTensor& a, const HostTensor& b, const HostTensor& y,
                        bool bias, bool residual, bool fuse_activation) {
  std::string k;
  for (const HostTensor* t : {&a, &b, &y}) {
    for (const int64_t d : t->dims) k += std::to_string(d) + ",";
    k += "|";
  }
  k += bias ? "b" : "-";
  k += residual ? "r" : "-";
  k += fuse_activation ? "a" : "-";
  return k;
}

std::unique_ptr<DnnlMatmul> prepare(const MatrixMultiplyParams& p, const HostTensor& at,
                                    const HostTensor& bt, const HostTensor& yt, bool bias,
                                    bool residual, bool fuse_activation) {
  auto c = std::make_unique<DnnlMatmul>();
  const size_t ra = at.dims.size(), rb = bt.dims.size(), ry = yt.dims.size();
  int64_t b_batch = 1;
  for (size_t i = 0; i + 2 < rb; ++i) b_batch *= bt.dims[i];
  if (!p.transpose_a && b_batch == 1) {
    // One shared b: a's batch entries are consecutive row blocks of one [batch*M, K] matrix.
    const int64_t k = at.dims[ra - 1];
    const int64_t rows = at.numel() / std::max<int64_t>(k, 1);
    const int64_t n = yt.dims[ry - 1];
    c->a_md = memory::desc({rows, k}, kF32, memory::format_tag::ab);
    c->b_md = operand_md({bt.dims[rb - 2], bt.dims[rb - 1]}, p.transpose_b, 2);
    c->dst_md = memory::desc({rows, n}, kF32, memory::format_tag::ab);
  } else {
    c->a_md = operand_md(at.dims, p.transpose_a, ry);
    c->b_md = operand_md(bt.dims, p.transpose_b, ry);
    c->dst_md = memory::desc(memory::dims(yt.dims.begin(), yt.dims.end()), kF32,
                             plain_strides(memory::dims(yt.dims.begin(), yt.dims.end())));
  }
  const size_t rank = static_cast<size_t>(c->dst_md.dims().size());
  if (bias) {
    memory::dims bd(rank, 1);
    bd[rank - 1] = c->dst_md.dims()[rank - 1];
    c->bias_md = memory::desc(bd, kF32, plain_strides(bd));
  }
  dnnl::primitive_attr attr;
  dnnl::post_ops ops;
  if (p.epilogue.scale != 1.0) {
    attr.set_output_scales(0, {static_cast<float>(p.epilogue.scale)});
    c->bias_as_binary = bias;
  }
  if (residual) ops.append_sum(1.0f);
  if (c->bias_as_binary) ops.append_binary(dnnl::algorithm::binary_add, c->bias_md);
  dnnl::algorithm alg{};
  float alpha = 0.0f, beta = 0.0f;
  if (fuse_activation && p.epilogue.fused_activation &&
      dnnl_eltwise_for(p.epilogue.activation, p.epilogue.alpha, p.epilogue.beta, alg, alpha,
                       beta)) {
    ops.append_eltwise(1.0f, alg, alpha, beta);
    c->activation_fused = true;
  }
  attr.set_post_ops(ops);
  const auto desc = bias && !c->bias_as_binary
                        ? dnnl::matmul::desc(c->a_md, c->b_md, c->bias_md, c->dst_md)
                        : dnnl::matmul::desc(c->a_md, c->b_md, c->dst_md);
  c->prim = dnnl::matmul(dnnl::matmul::primitive_desc(desc, attr, dnnl_cpu_engine()));
  return c;
}

}  // namespace

bool dnnl_matmul(const MatrixMultiplyParams& p, const KernelArgs& a, float* y_f32,
                 bool& activation_fused) {
  activation_fused = false;
  const HostTensor& at = a.in(0);
  const HostTensor& bt = a.in(1);
  HostTensor& yt = a.out();
  if (!dnnl_enabled() || at.dims.size() < 2 || bt.dims.size() < 2 || at.numel() == 0 ||
      bt.numel() == 0 || yt.numel() == 0) {
    return false;  // vectors and empty products: the reference kernel
  }
  const bool bias = a.has(2), residual = a.has(3);
  const bool fuse_activation = yt.dtype == DataType::kF32;
  std::unique_ptr<DnnlMatmul> local;
  DnnlMatmul* c = nullptr;
  try {
    c = dnnl_cached(a, problem_key(at, bt, yt, bias, residual, fuse_activation), local,
                    [&] { return prepare(p, at, bt, yt, bias, residual, fuse_activation); });
  } catch (const dnnl::error& e) {
    dnnl_refused(a, "matmul", "creation", e);
    return false;  // a configuration oneDNN does not take: the reference kernel runs it
  }
  std::vector<float> a_copy, b_copy, bias_copy, r_copy;
  if (residual) {
    // The sum post-op adds what the destination holds: preload it with the residual.
    const float* r = dnnl_f32_view(a.in(3), r_copy);
    if (r != y_f32) std::memcpy(y_f32, r, static_cast<size_t>(yt.numel()) * sizeof(float));
  }
  const dnnl::engine& eng = dnnl_cpu_engine();
  std::unordered_map<int, memory> args{
      {DNNL_ARG_SRC, memory(c->a_md, eng, dnnl_f32_view(at, a_copy))},
      {DNNL_ARG_WEIGHTS, memory(c->b_md, eng, dnnl_f32_view(bt, b_copy))},
      {DNNL_ARG_DST, memory(c->dst_md, eng, y_f32)}};
  if (bias) {
    const memory bias_mem(c->bias_md, eng, dnnl_f32_view(a.in(2), bias_copy));
    // The binary post-op's index: after the sum when there is a residual.
    const int binary_index = residual ? 1 : 0;
    args.emplace(c->bias_as_binary ? (DNNL_ARG_ATTR_MULTIPLE_POST_OP(binary_index) | DNNL_ARG_SRC_1)
                                   : DNNL_ARG_BIAS,
                 bias_mem);
  }
  try {
    dnnl_execute(c->prim, args);
  } catch (const dnnl::error& e) {
    dnnl_refused(a, "matmul", "execution", e);
    return false;  // the reference kernel recomputes the whole output
  }
  activation_fused = c->activation_fused;
  return true;
}

#else  // no oneDNN in this build

bool dnnl_matmul(const MatrixMultiplyParams&, const KernelArgs&, float*, bool& activation_fused) {
  activation_fused = false;
  return false;
}

#endif

}  // namespace ember::engine::cpu
