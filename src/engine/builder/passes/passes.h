// The builder's passes (private to the engine). Each pass takes the BuildState and changes it in
// place; each is unit-tested alone (tests/cpp/engine/builder_passes_test.cpp).
//
// Order (Builder::build): validate -> infer_shapes -> fuse_quantized -> fold_constants ->
// remove_dead_layers -> recognize_rms_norms -> absorb_casts -> fuse_epilogues ->
// quantize_norm_outputs -> channels_last -> pad_conv_channels ->
// simplify_attention -> fuse_epilogues_after_attention -> gather_slices -> compose_row_moves ->
// fuse_epilogues_after_row_moves -> fuse_pointwise -> merge_sibling_products ->
// select_implementations -> plan_memory -> time_tactics -> emission (plan_write).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "ember/engine/builder.h"
#include "plan/plan.h"

namespace ember::engine {

class Backend;

/// What the passes work on.
struct BuildState {
  BuilderConfig config;
  PlanModel plan;                     ///< plan.network is the builder's own clone.
  std::vector<std::string> log;       ///< One line per pass.
  int64_t timed_problems = 0;         ///< Problems time_tactics timed (cache misses).
};

/// A named pass.
struct Pass {
  std::string name;
  int min_optimization_level = 0;     ///< Skipped below this level.
  std::function<void(BuildState&)> run;
};

/// Checks the network and config: at least one output, unique names, known back end, every
/// profile resolved against the inputs (each input symbol has a range, min <= opt <= max).
void pass_validate(BuildState& s);
/// Re-infers every shape and proves the shape conditions over every profile: a condition or
/// dim that fails at the profile's min, opt or max point, or is negative over the whole range,
/// is a build error; ones that interval arithmetic proves are dropped; the rest stay as
/// run-time checks.
void pass_infer_shapes(BuildState& s);
/// Evaluates layers whose inputs are all constants (with static shapes and outputs no larger
/// than config.max_folded_constant_bytes) on the CPU reference back end and replaces them with
/// Constant layers. Fill and Shape layers with static shapes fold too.
void pass_fold_constants(BuildState& s);
/// Removes layers none of whose outputs reach a network output.
void pass_remove_dead_layers(BuildState& s);
/// The same without the log line (for passes that leave layers behind); returns how many.
int remove_unreachable_layers(Network& net);
/// Replaces RMSNorm written out as layers (an f32 upcast, the mean of squares over trailing
/// dims, + eps, rsqrt, the product, and an optional constant weight and casts: Hugging Face's
/// T5LayerNorm and Llama/Qwen2 RMSNorm) by one Normalization of type kRms (see
/// recognize_rms_norms.cpp). Returns how many it replaced.
int recognize_rms_norms(Network& net);
void pass_recognize_rms_norms(BuildState& s);
/// Runs each f32 Normalization or SoftMax that sits between a Cast up from f16/bf16 and a Cast
/// back to that type (through reshapes, transposes and slices) on the low-precision tensors,
/// with a norm's constant scale and bias rounded to that type (see absorb_casts.cpp: autocast's
/// norms). Returns how many it rewrote.
int absorb_casts(Network& net);
void pass_absorb_casts(BuildState& s);
/// Fuses Dequantize -> MatrixMultiply chains on int8/fp8 operands with a constant weight into
/// QuantizedMatrixMultiply layers (see fuse_quantized.cpp). Runs before fold_constants.
void pass_fuse_quantized(BuildState& s);
/// Folds per-channel scale/shift constants after a Convolution into its weights and bias, and
/// moves bias adds (MatrixMultiply), residual adds and activations after a Convolution or
/// MatrixMultiply into its fused epilogue (see fuse_epilogues.cpp for the patterns).
void pass_fuse_epilogues(BuildState& s);
/// Gives each layer norm read by a per-tensor symmetric int8 or FP8 Quantize a quantized output
/// that stands for it (see quantize_norm_outputs.cpp). Returns how many norms it rewrote.
int quantize_norm_outputs(Network& net);
void pass_quantize_norm_outputs(BuildState& s);
/// fuse_epilogues again after simplify_attention, on matrix products only (see fuse_epilogues.cpp).
void pass_fuse_epilogues_after_attention(BuildState& s);
/// fuse_epilogues once more on matrix products, after compose_row_moves moved the row moves
/// that stood between a product and its residual add (Swin-T's shifted blocks).
void pass_fuse_epilogues_after_row_moves(BuildState& s);
/// Moves connected regions of 2-d convolutions (f16/bf16 only when `f16_bf16_only`), the
/// poolings and pointwise layers they feed to channels_last (NHWC activations, KRSC weights),
/// with one transpose where a tensor enters or leaves a region (see channels_last.cpp).
/// Callable on any network (tests); returns the summary for the pass log.
std::string rewrite_channels_last(Network& net, bool f16_bf16_only);
/// rewrite_channels_last as config.channels_last says: by default f16/bf16 only and only for the
/// CUDA back end, where tensor-core convolution wants NHWC; other back ends keep NCHW.
void pass_channels_last(BuildState& s);
/// Pads the input channels of each channels_last Convolution (groups 1, constant weight, a
/// static C below backend.conv_channel_multiple(its dtype): an image; R * S * K at least
/// min_work_per_pixel) to that multiple, with a
/// Padding layer on the input and zero channels in the weight; a stride-2 one that alone reads
/// its input becomes a stride-1 convolution over 2x2 blocks of it (space-to-depth, unless
/// EMBER_SPACE_TO_DEPTH=0). See pad_conv_channels.cpp. Returns how many, and how many as blocks.
struct PadConvCounts {
  int padded = 0;
  int as_blocks = 0;
};
/// R * S * K (a layer's multiply-adds per output pixel and input channel) below which the pass
/// leaves a narrow convolution alone: its Padding, one more pass over the image, would cost
/// more than the faster layer saves (measurements in pad_conv_channels.cpp).
inline constexpr int64_t kPadConvMinWorkPerPixel = 1024;
PadConvCounts pad_conv_channels(Network& net, const Backend& backend,
                                int64_t min_work_per_pixel = kPadConvMinWorkPerPixel);
void pass_pad_conv_channels(BuildState& s);
/// Attention layers: drops constant masks that keep every key, turns constant causal masks into
/// the causal flag, and rewrites a layer whose query, key and value are transpose(1, 2)s of
/// [B, L, H, E] tensors and whose output only feeds a transpose(1, 2) into a seq-major layer on
/// the untransposed tensors, so those four copies disappear; reads key/value heads repeated by
/// HF's repeat_kv (unsqueeze, expand, reshape) un-repeated, as grouped-query heads; reads q, k
/// and v from one packed projection in place (see simplify_attention.cpp).
void pass_simplify_attention(BuildState& s);
// Graph queries shared by the rewriting passes (graph_queries.cpp).
/// The only consumer of `t`, when it has exactly one, reads it once, and `t` is not a network
/// output (the precondition of most rewrites).
Layer* sole_consumer(const Network& net, const Tensor* t);
/// `base`, primed (') until no layer of `net` has the name: names for layers a pass adds.
std::string unique_layer_name(const Network& net, std::string base);
/// True when the environment variable `name` is "0": a pass's switch for A/B timing
/// (EMBER_FUSE_POINTWISE, EMBER_RECOGNIZE_RMS_NORMS, EMBER_QUANTIZE_NORM_OUTPUTS).
bool switched_off_by_env(const char* name);
/// The weights of `t` when a Constant layer produces it; nullptr otherwise (or for nullptr).
const Weights* constant_of(const Tensor* t);
/// A Shuffle whose transposes are identities: it keeps the row-major bytes (a reshape, or a
/// copy). False for nullptr.
bool is_pure_reshape(const Layer* l);
/// A Shuffle that transposes by `perm` and nothing else (no reshape, an identity second
/// transpose). False for nullptr.
bool is_pure_transpose(const Layer* l, const std::vector<int64_t>& perm);
/// Replaces each Concatenation along the last dim of unit-stride last-dim slices of one tensor
/// (some negated: rotate_half) by one Gather with constant indices (times a +-1 vector), or by
/// the tensor itself when the pieces put it back together (see gather_slices.cpp). Returns how
/// many concatenations it replaced (`identities` of them by the tensor itself).
int gather_slices(Network& net, int* identities = nullptr);
void pass_gather_slices(BuildState& s);
/// Replaces each chain of two or more row moves (constant-index Gathers along a dim before the
/// last, Shuffles that keep the last dim: torch.roll, window partitions) by one Gather of rows
/// with a constant table, and a chain that keeps every row in place by a reshape (see
/// compose_row_moves.cpp). Static shapes only. Before that, row moves after a row-wise
/// MatrixMultiply whose A comes from a row move move before it (`sunk`: how many products).
/// Returns how many chains it replaced (`kept` of them by a reshape).
int compose_row_moves(Network& net, int* kept = nullptr, int* sunk = nullptr);
void pass_compose_row_moves(BuildState& s);
/// Replaces groups of two or more connected pointwise layers of one shape by FusedPointwise
/// layers (see fuse_pointwise.cpp for what is grouped); `backend` (may be null) adds its kernel
/// to each (Backend::prepare_fused_pointwise). Returns how many layers were fused; `notes`
/// (may be null) gets a line per group left alone and per back-end remark. `row_reductions`
/// false keeps Reduce layers out of the groups (A/B timing of that part alone).
int fuse_pointwise_layers(Network& net, const Backend* backend, std::vector<std::string>* notes,
                          bool row_reductions = true);
/// Whether pass_fuse_pointwise will run for `config` (level >= 2, BuilderConfig::fuse_pointwise,
/// and EMBER_FUSE_POINTWISE not "0"); fuse_epilogues asks, to leave it what it fuses better.
bool fuse_pointwise_enabled(const BuilderConfig& config);
/// The values of a float constant as f32, and f32 values as a constant of `dtype` (rounded).
std::vector<float> to_floats(const Weights& w);
Weights from_floats(DataType dtype, std::vector<int64_t> dims, const std::vector<float>& v);
/// A reshape of `y` [.., W] to its rows of heads [.., W / e, e]: one a layer already makes, or a
/// new one (a reshape shares its input's memory: it costs nothing).
Tensor* rows_of_heads(Network& net, Tensor* y, int64_t e);
/// Whether two products' epilogues compute the same thing (scale and activation).
bool same_epilogue(const Epilogue& a, const Epilogue& b);
/// Rank-1 biases of products of `widths` side by side as one constant named `name` (zeros, +0.0,
/// for a null entry: a product without a bias); nullptr when every entry is null.
Tensor* concat_biases(Network& net, const std::vector<const Weights*>& biases,
                      const std::vector<int64_t>& widths, const std::string& name);
/// Rank-2 product weights side by side along N (rows of [N_i, K] blocks when transpose_b, else
/// [K, N_i] blocks side by side): the weight of one product that computes them all.
Weights concat_product_weights(const std::vector<const Weights*>& ws, bool transpose_b);
/// After fuse_pointwise: merges MatrixMultiply layers that read one input with constant weights,
/// and whose outputs only FusedPointwise layers read (directly or through a reshape into heads),
/// into one product whose parts those layers read in place through slice views (SwiGLU's gate
/// and up, a GQA decoder's q and k before RoPE; see merge_sibling_products.cpp). Returns how
/// many products it merged.
int merge_sibling_products(Network& net);
/// merge_sibling_products when fuse_pointwise ran, unless EMBER_MERGE_SIBLING_PRODUCTS=0.
void pass_merge_sibling_products(BuildState& s);
/// True when fuse_pointwise groups `l` with pointwise layers of its shape (an Activation, float
/// ElementWise arithmetic, float Unary math, a float Cast or an Identity).
bool is_fusable_pointwise(const Layer* l);
/// fuse_pointwise_layers unless config.fuse_pointwise is false or EMBER_FUSE_POINTWISE=0;
/// EMBER_FUSE_ROW_REDUCTIONS=0 keeps the reductions out.
void pass_fuse_pointwise(BuildState& s);
/// Chooses an implementation for every layer (plan.impls).
void pass_select_implementations(BuildState& s);
/// Assigns arena offsets by liveness (first fit, 256-byte aligned) using each tensor's largest
/// size over all profiles; the output of a reshape-only Shuffle shares its input's slot. Fails
/// when the arena exceeds config.memory_limit.
void pass_plan_memory(BuildState& s);

/// "cuda" builds on a machine with a GPU: runs the plan once at the first profile's opt shapes
/// (zero inputs) so that every matmul and convolution problem is timed, seeded from
/// config.timing_cache, and fills plan.timing with the choices of the plan's problems (and
/// config.timing_cache with them). Without a GPU, or for "cpu", plan.timing stays empty.
void pass_time_tactics(BuildState& s);
/// The default pipeline, in order.
std::vector<Pass> default_passes();

/// Largest byte size of `t` over all of `profiles` (upper bound by interval arithmetic).
int64_t max_tensor_bytes(const Tensor& t, const std::vector<OptimizationProfile>& profiles);

}  // namespace ember::engine
