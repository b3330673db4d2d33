// Convolution through oneDNN (see dnnl_conv.h).
//
// Per layer and shape, one oneDNN primitive is created with its source, weights and destination
// in the layouts oneDNN prefers (blocked, "format any"), the bias as its bias input, the residual
// as a sum post-op (the destination is preloaded with it) and the activation as an eltwise
// post-op when the output is f32 (an f16/bf16 output rounds before its activation, as the
// reference does, so the activation then runs after the rounding). The weights are reordered
// into the primitive's layout once, when they come from a Constant layer; the NCHW source and
// destination are reordered on every call (the arena holds plain NCHW tensors), as PyTorch's
// own CPU convolution does.
#include "backends/cpu/dnnl_conv.h"

#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#ifdef EMBER_WITH_DNNL
#include "backends/cpu/dnnl_common.h"
#endif

#include "ember/engine/network.h"

namespace ember::engine::cpu {

#ifdef EMBER_WITH_DNNL

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
constexpr auto kF32 = memory::data_type::f32;

/// The prepared convolution of one layer and shape.
struct DnnlConv final : KernelCache::Entry {
  dnnl::convolution_forward::primitive_desc pd;
  dnnl::convolution_forward prim;
  memory::desc user_src, user_wei, user_dst;
  memory weights;       // in pd.weights_desc(); filled once when `weights_constant`
  bool weights_ready = false;
  memory src_blocked, dst_blocked;  // empty when the primitive takes NCHW as it is
  bool activation_fused = false;
};

std::unique_ptr<DnnlConv> prepare(const ConvolutionParams& p, const HostTensor& x,
                                  const HostTensor& w, const HostTensor& y, bool bias,
                                  bool residual, bool fuse_activation) {
  const memory::dims src{x.dims[0], x.dims[1], x.dims[2], x.dims[3]};
  const memory::dims dst{y.dims[0], y.dims[1], y.dims[2], y.dims[3]};
  const int64_t g = p.groups;
  const memory::dims wei = g == 1 ? memory::dims{w.dims[0], w.dims[1], w.dims[2], w.dims[3]}
                                  : memory::dims{g, w.dims[0] / g, w.dims[1], w.dims[2], w.dims[3]};
  const memory::dims strides{p.stride[0], p.stride[1]};
  const memory::dims dilates{p.dilation[0] - 1, p.dilation[1] - 1};  // oneDNN counts from 0
  const memory::dims pad_l{p.padding_begin[0], p.padding_begin[1]};
  const memory::dims pad_r{p.padding_end[0], p.padding_end[1]};
  auto c = std::make_unique<DnnlConv>();
  c->user_src = memory::desc(src, kF32, Tag::nchw);
  c->user_dst = memory::desc(dst, kF32, Tag::nchw);
  c->user_wei = memory::desc(wei, kF32, g == 1 ? Tag::oihw : Tag::goihw);
  const memory::desc any_src(src, kF32, Tag::any), any_wei(wei, kF32, Tag::any),
      any_dst(dst, kF32, Tag::any), bias_md({dst[1]}, kF32, Tag::a);
  const auto desc =
      bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference,
                                             dnnl::algorithm::convolution_direct, any_src, any_wei,
                                             bias_md, any_dst, strides, dilates, pad_l, pad_r)
           : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference,
                                             dnnl::algorithm::convolution_direct, any_src, any_wei,
                                             any_dst, strides, dilates, pad_l, pad_r);
  dnnl::post_ops ops;
  if (residual) ops.append_sum(1.0f);
  dnnl::algorithm alg{};
  float alpha = 0.0f, beta = 0.0f;
  if (fuse_activation && p.epilogue.fused_activation &&
      dnnl_eltwise_for(p.epilogue.activation, p.epilogue.alpha, p.epilogue.beta, alg, alpha, beta)) {
    ops.append_eltwise(1.0f, alg, alpha, beta);
    c->activation_fused = true;
  }
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  c->pd = dnnl::convolution_forward::primitive_desc(desc, attr, dnnl_cpu_engine());
  c->prim = dnnl::convolution_forward(c->pd);
  c->weights = memory(c->pd.weights_desc(), dnnl_cpu_engine());
  if (c->pd.src_desc() != c->user_src) c->src_blocked = memory(c->pd.src_desc(), dnnl_cpu_engine());
  if (c->pd.dst_desc() != c->user_dst) c->dst_blocked = memory(c->pd.dst_desc(), dnnl_cpu_engine());
  return c;
}

std::string problem_key(const HostTensor& x, const HostTensor& w, bool bias, bool residual,
                        bool fuse_activation) {
  std::string k;
  for (const int64_t d : x.dims) k += std::to_string(d) + ",";
  k += "|";
  for (const int64_t d : w.dims) k += std::to_string(d) + ",";
  k += bias ? "b" : "-";
  k += residual ? "r" : "-";
  k += fuse_activation ? "a" : "-";
  return k;
}

}  // namespace

bool dnnl_available() { return dnnl_enabled(); }

bool dnnl_convolution(const ConvolutionParams& p, const KernelArgs& a, float* y_f32,
                      bool& activation_fused) {
  activation_fused = false;
  const HostTensor& xt = a.in(0);
  const HostTensor& wt = a.in(1);
  HostTensor& yt = a.out();
  if (!dnnl_enabled() || p.channels_last || xt.dims.size() != 4 || wt.dims.size() != 4 || p.stride.size() != 2 ||
      p.epilogue.scale != 1.0 || xt.numel() == 0 || wt.numel() == 0 || yt.numel() == 0) {
    return false;
  }
  const bool bias = a.has(2), residual = a.has(3);
  const bool fuse_activation = yt.dtype == DataType::kF32;
  // Weights of a Constant layer never change for this context's engine: reorder them once.
  const auto* layer = static_cast<const Layer*>(a.layer);
  const bool weights_constant = layer != nullptr && layer->inputs().size() > 1 &&
                                layer->inputs()[1] != nullptr &&
                                layer->inputs()[1]->producer() != nullptr &&
                                layer->inputs()[1]->producer()->kind() == LayerKind::kConstant;
  std::unique_ptr<DnnlConv> local;
  DnnlConv* c = nullptr;
  try {
    c = dnnl_cached(a, problem_key(xt, wt, bias, residual, fuse_activation), local, [&] {
      return prepare(p, xt, wt, yt, bias, residual, fuse_activation);
    });
  } catch (const dnnl::error& e) {
    dnnl_refused(a, "convolution", "creation", e);
    return false;  // a configuration oneDNN does not take: the reference kernel runs it
  }
  std::vector<float> x_copy, w_copy, b_copy, r_copy;
  try {
    if (!c->weights_ready) {
      const memory user_w(c->user_wei, dnnl_cpu_engine(), dnnl_f32_view(wt, w_copy));
      dnnl_reorder(user_w, c->weights);
      c->weights_ready = weights_constant;
    }
    const memory src(c->user_src, dnnl_cpu_engine(), dnnl_f32_view(xt, x_copy));
    const memory dst(c->user_dst, dnnl_cpu_engine(), y_f32);
    memory conv_src = src, conv_dst = dst;
    if (c->src_blocked) {
      dnnl_reorder(src, c->src_blocked);
      conv_src = c->src_blocked;
    }
    if (c->dst_blocked) conv_dst = c->dst_blocked;
    if (residual) {
      // The sum post-op adds what the destination holds: preload it with the residual.
      dnnl_reorder(memory(c->user_dst, dnnl_cpu_engine(), dnnl_f32_view(a.in(3), r_copy)), conv_dst);
    }
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, conv_src}, {DNNL_ARG_WEIGHTS, c->weights}, {DNNL_ARG_DST, conv_dst}};
    if (bias) {
      args.emplace(DNNL_ARG_BIAS,
                   memory(c->pd.bias_desc(), dnnl_cpu_engine(), dnnl_f32_view(a.in(2), b_copy)));
    }
    dnnl_execute(c->prim, args);
    if (c->dst_blocked) dnnl_reorder(c->dst_blocked, dst);
  } catch (const dnnl::error& e) {
    // oneDNN checks before it computes, and the inputs were only read (the residual preload
    // writes the destination), so the reference kernel recomputes the whole output.
    dnnl_refused(a, "convolution", "execution", e);
    return false;
  }
  activation_fused = c->activation_fused;
  return true;
}

#else  // no oneDNN in this build

bool dnnl_available() { return false; }

bool dnnl_convolution(const ConvolutionParams&, const KernelArgs&, float*, bool& activation_fused) {
  activation_fused = false;
  return false;
}

#endif

}  // namespace ember::engine::cpu
