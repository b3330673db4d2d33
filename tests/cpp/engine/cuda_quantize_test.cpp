// CUDA conformance of the quantization family: Quantize and Dequantize (per-tensor and
// per-channel, int8/uint8 with zero points, FP8 E4M3), the fused QuantizedMatrixMultiply
// (cuBLASLt INT8 and FP8 GEMMs) and QuantizedConvolution (cuDNN INT8, or the direct int8
// kernel) against the CPU reference. Quantized outputs must be
// bit-identical; float outputs within tolerance_for(dtype). Skipped (visibly) without a GPU;
// the FP8 GEMM case also without compute capability 8.9.
#ifdef EMBER_WITH_CUDA

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "backends/cuda/conv_graph.h"
#include "backends/cuda/quantize_kernels.h"
#include "builder/passes/passes.h"
#include "cuda_test_util.h"
#include "ember/engine/half.h"

namespace ember::engine {
namespace {

using test::TestTensor;

Tensor* f32_constant(Network& net, const std::vector<float>& v) {
  return net
      .add_constant(Weights::from_vector(DataType::kF32, {static_cast<int64_t>(v.size())}, v))
      ->output();
}

/// FP8 codes `got` against `ref` where the value before quantization came out of tensor-core
/// sums (another order than the reference's, then rounded to 16 bits): a 16-bit value one ulp
/// away may round to the neighbouring E4M3 code when it sits at a midpoint, so each code may be
/// one step from the reference's (same sign), and at most 1% of them (plus one) may differ.
///
/// `sum_error` (empty: none), per element: a bound on how far the tensor cores' FP8 sum may be
/// from the exact one, in the output's quantized units. Hopper's FP8 MMA accumulates with about
/// 14 mantissa bits between its promotions to f32 (DeepSeek-V3's report, section 3.3.2), so its
/// error scales with the sum of |x * w| rather than with the result: where a convolution's sum
/// nearly cancels against its bias (a small value after the relu), that error is several codes
/// of a small output. An element may then differ by more than a step when its decoded value is
/// within that bound of the reference's.
void expect_fp8_within_one_code(const std::vector<uint8_t>& got, const std::vector<uint8_t>& ref,
                                const std::string& label,
                                const std::vector<float>& sum_error = {}) {
  ASSERT_EQ(got.size(), ref.size()) << label;
  size_t differ = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] == ref[i]) continue;
    ++differ;
    const int steps = std::abs(static_cast<int>(got[i] & 0x7f) - static_cast<int>(ref[i] & 0x7f));
    const bool zeros = (got[i] & 0x7f) == 0 && (ref[i] & 0x7f) == 0;
    const bool within_sum_error =
        !sum_error.empty() &&
        std::fabs(f8e4m3_to_f32(got[i]) - f8e4m3_to_f32(ref[i])) <= sum_error[i];
    EXPECT_TRUE(zeros || within_sum_error ||
                ((got[i] & 0x80) == (ref[i] & 0x80) && steps <= 1))
        << label << " element " << i << ": code " << int{got[i]} << " against " << int{ref[i]}
        << (sum_error.empty() ? std::string()
                              : ", sum error bound " + std::to_string(sum_error[i]));
  }
  EXPECT_LE(differ, got.size() / 100 + 1) << label << ": " << differ << " of " << got.size()
                                          << " FP8 codes differ from the reference";
}

struct TieValue;
void expect_int8_within_ties(const std::vector<uint8_t>& got, const std::vector<uint8_t>& ref,
                             const std::string& label, const std::vector<TieValue>& values);

/// Runs `net` on the GPU and on the CPU reference; quantized outputs must match byte for byte
/// (FP8 ones within one code when `fp8_from_tensor_cores`: expect_fp8_within_one_code; int8
/// ones at rounding ties when `int8_values` is given: expect_int8_within_ties).
void check_bytes_and_floats(const Network& net, const std::vector<TestTensor>& inputs,
                            const std::string& what,
                            ChannelsLast channels_last = ChannelsLast::kAuto,
                            bool fp8_from_tensor_cores = false,
                            const std::vector<float>& fp8_sum_error = {},
                            const std::vector<TieValue>& int8_values = {}) {
  test::CudaRunner runner(net, inputs, {}, 3, channels_last);
  EXPECT_EQ(runner.inspect_json().find("cuda.host"), std::string::npos) << what;
  // Layer by layer (which prepares, e.g. packs a convolution's weight once), then the CUDA
  // graph's capture and its replay.
  for (int run = 0; run < 3; ++run) {
    const auto got = runner.run(inputs);
    const auto ref = test::run_network_direct(net, inputs);
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < got.size(); ++i) {
      const std::string label =
          what + " output " + std::to_string(i) + " run " + std::to_string(run);
      ASSERT_EQ(got[i].dtype, ref[i].dtype) << label;
      if (dtype_is_float(got[i].dtype)) {
        test::expect_close(got[i], ref[i].to_floats(), got[i].dtype, label);
      } else if (fp8_from_tensor_cores && got[i].dtype == DataType::kF8E4M3) {
        expect_fp8_within_one_code(got[i].bytes, ref[i].bytes, label, fp8_sum_error);
      } else if (!int8_values.empty() && got[i].dtype == DataType::kI8) {
        expect_int8_within_ties(got[i].bytes, ref[i].bytes, label, int8_values);
      } else {
        EXPECT_EQ(got[i].bytes, ref[i].bytes) << label;
      }
    }
  }
}

TEST(CudaQuantize, PerTensorAndPerChannelQuantizeDequantizeMatchTheReference) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  // {3, 5, 7}: element by element; {3, 5, 8}: four a thread (n % 4 == 0, and the per-channel
  // axis 1 has inner size 8).
  for (const std::vector<int64_t>& dims : {std::vector<int64_t>{3, 5, 7}, {3, 5, 8}}) {
  for (DataType in : {DataType::kF32, DataType::kF16, DataType::kBF16}) {
    Network net;
    Tensor* x = net.add_input("x", in, Shape(dims.begin(), dims.end()));
    Tensor* s1 = f32_constant(net, {0.03f});
    Tensor* sc = f32_constant(net, {0.01f, 0.02f, 0.05f, 0.1f, 0.002f});
    Tensor* zc = net.add_constant(Weights::from_vector(DataType::kI32, {5},
                                                       std::vector<int32_t>{0, 5, -3, 100, 1}))
                     ->output();
    QuantizeParams i8;
    Tensor* q1 = net.add_quantize(x, s1, nullptr, i8, "q_i8")->output();
    QuantizeParams u8;
    u8.to = DataType::kU8;
    u8.quant_min = 0;
    u8.quant_max = 255;
    u8.per_channel = true;
    u8.axis = 1;
    Tensor* q2 = net.add_quantize(x, sc, zc, u8, "q_u8")->output();
    QuantizeParams f8;
    f8.to = DataType::kF8E4M3;
    Tensor* q3 = net.add_quantize(x, s1, nullptr, f8, "q_f8")->output();
    DequantizeParams d;
    d.to = in;
    Tensor* y1 = net.add_dequantize(q1, s1, nullptr, d, "dq_i8")->output();
    DequantizeParams dc = d;
    dc.per_channel = true;
    dc.axis = 1;
    Tensor* y2 = net.add_dequantize(q2, sc, zc, dc, "dq_u8")->output();
    Tensor* y3 = net.add_dequantize(q3, s1, nullptr, d, "dq_f8")->output();
    for (Tensor* t : {q1, q2, q3, y1, y2, y3}) net.mark_output(t);
    TestTensor xt = TestTensor::random(in, dims, 9, -20.0f, 20.0f);
    check_bytes_and_floats(net, {xt}, std::string("quantize from ") + dtype_name(in) +
                                          " dims[2] = " + std::to_string(dims[2]));
  }
  }
}

/// What check_product puts after the sum besides the scales: a bias, a GELU and the
/// requantization to int8 (kFull); a bias (kBias) or a bias and a relu (kBiasRelu), both with
/// an epilogue scale of 0.5, which FP8 runs in cuBLASLt's own epilogue; a bias and an erf GELU
/// (kBiasGeluErf, scale 0.5), which FP8 finishes in a pass on cuBLASLt's 16-bit output; that
/// and the requantization to FP8 (kBiasGeluErfToFp8: one pass for both); a bias and a residual
/// (kBiasResidual, a second network input of the output's shape: FP8 as cuBLASLt's C), then a
/// relu (kBiasResidualRelu: cuBLASLt's RELU_BIAS after C) or an erf GELU (kBiasResidualGeluErf:
/// the pass in place after it).
enum class ProductTail { kNone, kFull, kBias, kBiasRelu, kBiasGeluErf, kBiasGeluErfToFp8,
                         kBiasResidual, kBiasResidualRelu, kBiasResidualGeluErf };

/// a [M, K] x b [N, K]^T through the fused layer, per-column int8 scales or per-tensor FP8,
/// with `tail` after it (`epilogue`: kFull); with `zero_point` >= 0, a is uint8 with that zero
/// point.
void check_product(DataType q, DataType out, int64_t m, int64_t n, int64_t k,
                   bool epilogue = false, int32_t zero_point = -1,
                   ProductTail tail = ProductTail::kNone) {
  if (epilogue) tail = ProductTail::kFull;
  Network net;
  Tensor* a = net.add_input("a", zero_point >= 0 ? DataType::kU8 : q, {m, k});
  std::vector<int8_t> w8(static_cast<size_t>(n * k));
  std::vector<uint8_t> wf(w8.size());
  for (size_t i = 0; i < w8.size(); ++i) {
    w8[i] = static_cast<int8_t>((static_cast<int>(i) * 29) % 255 - 127);
    wf[i] = f32_to_f8e4m3(static_cast<float>(w8[i]) * 0.25f);
  }
  Tensor* b = net.add_constant(q == DataType::kI8 ? Weights::from_vector(q, {n, k}, w8)
                                                  : Weights::from_vector(q, {n, k}, wf))
                  ->output();
  std::vector<float> sb;
  if (q == DataType::kI8) {
    for (int64_t j = 0; j < n; ++j) sb.push_back(0.001f * static_cast<float>(j % 7 + 1));
  } else {
    sb.push_back(0.004f);
  }
  QuantizedMatrixMultiplyParams p;
  p.out = out;
  std::vector<Tensor*> inputs{a, b, f32_constant(net, {0.02f}), f32_constant(net, sb)};
  if (tail != ProductTail::kNone) {
    std::vector<float> bv;
    for (int64_t j = 0; j < n; ++j) bv.push_back(0.25f * static_cast<float>(j % 5) - 0.5f);
    const TestTensor bt = TestTensor::floats(out, {n}, bv);
    inputs.push_back(net.add_constant(Weights::copy(out, {n}, bt.bytes.data()))->output());
  }
  if (tail == ProductTail::kFull) {
    inputs.push_back(f32_constant(net, {0.05f}));
    p.epilogue.fused_activation = true;
    p.epilogue.activation = ActivationType::kGeluTanh;
    p.requantize.enabled = true;
    p.requantize.quant_min = -127;
  } else if (tail != ProductTail::kNone) {
    const bool gelu = tail == ProductTail::kBiasGeluErf || tail == ProductTail::kBiasGeluErfToFp8 ||
                      tail == ProductTail::kBiasResidualGeluErf;
    p.epilogue.scale = 0.5;
    p.epilogue.fused_activation =
        tail == ProductTail::kBiasRelu || tail == ProductTail::kBiasResidualRelu || gelu;
    p.epilogue.activation = gelu ? ActivationType::kGeluErf : ActivationType::kRelu;
  }
  if (tail == ProductTail::kBiasGeluErfToFp8) {
    inputs.push_back(f32_constant(net, {0.125f}));
    p.requantize.enabled = true;
    p.requantize.to = DataType::kF8E4M3;
  }
  const bool residual = tail == ProductTail::kBiasResidual ||
                        tail == ProductTail::kBiasResidualRelu ||
                        tail == ProductTail::kBiasResidualGeluErf;
  if (residual) {
    inputs.resize(7, nullptr);
    inputs.push_back(net.add_input("r", out, {m, n}));
  }
  if (zero_point >= 0) {
    inputs.resize(6, nullptr);
    inputs.push_back(net.add_constant(Weights::from_vector(DataType::kI32, {1},
                                                           std::vector<int32_t>{zero_point}))
                         ->output());
  }
  net.mark_output(net.add_layer(p, inputs)->output(), "y");
  TestTensor at;
  if (zero_point >= 0) {
    at = TestTensor::random(DataType::kU8, {m, k}, 4, 0.0f, 256.0f);
  } else if (q == DataType::kI8) {
    at = TestTensor::random(DataType::kI8, {m, k}, 4, -127.0f, 128.0f);
  } else {
    const TestTensor f = TestTensor::random(DataType::kF32, {m, k}, 4, -300.0f, 300.0f);
    at.dtype = q;
    at.dims = {m, k};
    for (float v : f.to_floats()) at.bytes.push_back(f32_to_f8e4m3(v));
  }
  std::vector<TestTensor> ins{at};
  if (residual) {
    ins.push_back(TestTensor::random(out, {m, n}, 5, -8.0f, 8.0f));
  }
  check_bytes_and_floats(net, ins,
                         std::string(dtype_name(q)) + " product to " + dtype_name(out) +
                             " m=" + std::to_string(m) + " n=" + std::to_string(n) +
                             " k=" + std::to_string(k),
                         ChannelsLast::kAuto, q == DataType::kF8E4M3);
}

TEST(CudaQuantize, Int8GemmThroughCublasLtMatchesTheReference) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  check_product(DataType::kI8, DataType::kF32, 64, 48, 128);
  check_product(DataType::kI8, DataType::kF16, 33, 16, 64);
  check_product(DataType::kI8, DataType::kBF16, 5, 8, 12);
  // K % 4 != 0: the direct kernel (on the device, graph-captured), plain and with the whole
  // epilogue on uint8 activations with a zero point.
  check_product(DataType::kI8, DataType::kF32, 7, 5, 9);
  check_product(DataType::kI8, DataType::kF16, 6, 10, 30, true, 3);
}

TEST(CudaQuantize, ProductEpiloguesMatchTheReference) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  // Bias, GELU and requantization to int8 in the pass after the GEMM: int8 bytes must match
  // the CPU reference exactly (both sum exactly and run the same f32 epilogue).
  check_product(DataType::kI8, DataType::kF32, 64, 48, 128, true);
  check_product(DataType::kI8, DataType::kF16, 33, 16, 64, true);
  // uint8 activations with a zero point: shifted into int8 for the GEMM, corrected after it.
  check_product(DataType::kI8, DataType::kF32, 64, 48, 128, false, 128);
  check_product(DataType::kI8, DataType::kF16, 32, 16, 64, true, 3);
  // A residual in the pass (four a thread, then one a thread: n = 6).
  check_product(DataType::kI8, DataType::kF16, 33, 16, 64, false, -1, ProductTail::kBiasResidual);
  check_product(DataType::kI8, DataType::kF32, 7, 6, 12, false, -1, ProductTail::kBiasResidual);
  int dev = 0, major = 0, minor = 0;
  test::cuda_ok(cudaGetDevice(&dev), "cudaGetDevice");
  test::cuda_ok(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cc");
  test::cuda_ok(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cc");
  if (major * 10 + minor >= 89) {
    // FP8: the f32 sums of the tensor cores may differ from the sequential reference in the
    // last bits, so a requantized value on a rounding tie may move one step: bf16 output
    // without requantization is compared instead (the epilogue pass after an f32 GEMM).
    check_product(DataType::kF8E4M3, DataType::kBF16, 64, 32, 128, false);
  }
}

// EMBER_QMATMUL=igemm: the symmetric int8 products with k % 16 == 0 run in Ember's
// implicit-GEMM kernel (as 1x1 convolutions), the epilogue in it: bytes must match. The others
// (k = 12, a zero point) keep cuBLASLt's or the direct path.
TEST(CudaQuantize, Int8ProductsThroughTheImplicitGemmKernelMatchTheReference) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  const test::ScopedEnv igemm("EMBER_QMATMUL", "igemm");
  const int64_t before = cuda::igemm_launches();
  check_product(DataType::kI8, DataType::kF32, 64, 48, 128);
  check_product(DataType::kI8, DataType::kF16, 33, 16, 64);
  const int64_t plain = cuda::igemm_launches();
  EXPECT_GT(plain, before);
  check_product(DataType::kI8, DataType::kF32, 64, 48, 128, true);
  check_product(DataType::kI8, DataType::kF16, 33, 16, 64, false, -1, ProductTail::kBiasResidual);
  // Several tiles: m = 300 rows, n = 200 columns (a partial second column of tiles), k = 208
  // (3.25 steps of 64), GELU and requantization.
  check_product(DataType::kI8, DataType::kF16, 300, 200, 208, true);
  check_product(DataType::kI8, DataType::kBF16, 300, 200, 208, false, -1,
                ProductTail::kBiasResidualGeluErf);
  const int64_t covered = cuda::igemm_launches();
  EXPECT_GE(covered - plain, 4);
  check_product(DataType::kI8, DataType::kF32, 7, 6, 12, false, -1, ProductTail::kBiasResidual);
  check_product(DataType::kI8, DataType::kF32, 64, 48, 128, false, 128);
  EXPECT_EQ(cuda::igemm_launches(), covered);  // k = 12, and a zero point: not the kernel's
}

TEST(CudaQuantize, Fp8GemmThroughCublasLtMatchesTheReference) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  int dev = 0, major = 0, minor = 0;
  test::cuda_ok(cudaGetDevice(&dev), "cudaGetDevice");
  test::cuda_ok(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev), "cc");
  test::cuda_ok(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev), "cc");
  if (major * 10 + minor < 89) GTEST_SKIP() << "FP8 needs compute capability 8.9";
  // Half-precision outputs: FP8 tensor cores sum in their own order and width, so an f32
  // output would differ from the sequential f32 reference by more than f32's tolerance; a
  // 16-bit output rounds that difference away (its tolerance is the output type's).
  check_product(DataType::kF8E4M3, DataType::kBF16, 64, 32, 128);
  check_product(DataType::kF8E4M3, DataType::kF16, 16, 16, 64);
  // A bias (and a relu), an epilogue scale: in cuBLASLt's own BIAS / RELU_BIAS epilogue.
  check_product(DataType::kF8E4M3, DataType::kF16, 64, 48, 128, false, -1, ProductTail::kBias);
  check_product(DataType::kF8E4M3, DataType::kBF16, 33, 32, 64, false, -1,
                ProductTail::kBiasRelu);
  // An activation cuBLASLt has no epilogue for (BERT's erf GELU): cuBLASLt writes the biased
  // 16-bit output, a pass applies the activation in place (as the f16 MatrixMultiply does).
  check_product(DataType::kF8E4M3, DataType::kF16, 64, 48, 128, false, -1,
                ProductTail::kBiasGeluErf);
  check_product(DataType::kF8E4M3, DataType::kBF16, 33, 32, 64, false, -1,
                ProductTail::kBiasGeluErf);
  // The erf GELU and the requantization to FP8 in one pass after cuBLASLt's 16-bit output
  // (a 64 x 48 and a 3 x 32 output).
  check_product(DataType::kF8E4M3, DataType::kF16, 64, 48, 128, false, -1,
                ProductTail::kBiasGeluErfToFp8);
  check_product(DataType::kF8E4M3, DataType::kBF16, 3, 32, 64, false, -1,
                ProductTail::kBiasGeluErfToFp8);
  // A residual as cuBLASLt's C (beta 1), with the bias epilogue.
  check_product(DataType::kF8E4M3, DataType::kF16, 64, 48, 128, false, -1,
                ProductTail::kBiasResidual);
  check_product(DataType::kF8E4M3, DataType::kBF16, 33, 32, 64, false, -1,
                ProductTail::kBiasResidual);
  check_product(DataType::kF8E4M3, DataType::kF16, 64, 48, 128, false, -1,
                ProductTail::kBiasResidualRelu);
  check_product(DataType::kF8E4M3, DataType::kF16, 64, 48, 128, false, -1,
                ProductTail::kBiasResidualGeluErf);
  // K or N not a multiple of 16 (an ImageNet classifier's N = 1000): the direct kernel, also
  // with a residual and with the FP8 requantization (the epilogue pass after f32 sums).
  check_product(DataType::kF8E4M3, DataType::kF16, 5, 24, 40, false, -1,
                ProductTail::kBiasResidual);
  check_product(DataType::kF8E4M3, DataType::kF16, 5, 24, 40, false, -1,
                ProductTail::kBiasGeluErfToFp8);
  check_product(DataType::kF8E4M3, DataType::kF16, 3, 16, 20);
  check_product(DataType::kF8E4M3, DataType::kF16, 4, 1000, 256);
}

/// One QuantizedConvolution problem for the GPU.
struct CudaQConv {
  std::vector<int64_t> x_dims, w_dims, stride, pad_begin, pad_end, dilation;
  int64_t groups = 1;
  bool per_channel = true;
  bool bias = true;
  DataType out = DataType::kF32;
  bool relu = false;
  bool direct = false;  ///< Expected to run in the direct kernel (3-d, grouped).
  bool requantize = false;  ///< int8 (FP8 for an FP8 x) output through out_scale.
  int32_t zero_point = -1;  ///< >= 0: uint8 x with this zero point (input 6).
  bool fp8 = false;  ///< FP8 E4M3 x and w (per-tensor w_scale).
  /// Non-empty: a residual input "r" of these (the output's NCHW) dims, added before the relu.
  std::vector<int64_t> residual_dims;
  /// The residual is int8 with a scale (input 8; ResNet's shortcut read from the previous
  /// block's int8 output), read as residual * residual_scale rounded to `out`.
  bool residual_int8 = false;
  float residual_scale = 0.01f;
  float out_scale = 0.04f;  ///< The requantization's scale.
  int32_t quant_min = -128;  ///< The int8 requantization's lower bound (ember.quantize: -127).
  float x_scale = 0.02f;
  float w_scale_unit = 0.0005f;  ///< w_scale[k] = unit * (k % 5 + 1)
  /// Powers-of-two scales and no bias: every path's requantized value is exact, so values on
  /// an exact rounding tie must round half to even as the reference does (bytes must match).
  bool exact_scales = false;
};

/// The graph path's (run_quantized_conv_graph) executions while `f` runs: the channels_last
/// cases whose channels it takes run there unless cuDNN refused their graphs.
template <class F>
int64_t graph_executions_during(F f) {
  const int64_t before = cuda::conv_graph_counters().executions;
  f();
  return cuda::conv_graph_counters().executions - before;
}

/// Hopper and later have cuDNN engines for the INT8 and FP8 convolution graphs (the cuDNN
/// frontend's int8_fprop and fp8_fprop samples); elsewhere a refusal is a fallback, not a bug.
bool expect_quantized_graph_engines() {
  int device = 0, major = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) ==
             cudaSuccess &&
         major >= 9;
}

/// Whether quantized_conv.cpp's graph_first sends a layer to the graph under the current
/// EMBER_QCONV: INT8 unless it is gemm or cudnn, FP8 only when it is graph.
bool graph_selected(bool fp8) {
  const char* v = std::getenv("EMBER_QCONV");
  const std::string q = v != nullptr ? v : "";
  return fp8 ? q == "graph" : q != "gemm" && q != "cudnn";
}

/// Whether EMBER_QCONV=igemm sends an INT8 case to Ember's implicit-GEMM kernel
/// (quantized_conv.cpp; igemm_covers: NHWC 2-d, groups = 1, symmetric int8, C % 16 == 0).
bool igemm_selected(const CudaQConv& c) {
  const char* v = std::getenv("EMBER_QCONV");
  return v != nullptr && std::string(v) == "igemm" && !c.fp8 && c.x_dims.size() == 4 &&
         c.groups == 1 && c.zero_point < 0 && c.x_dims[1] % 16 == 0;
}

/// Calls f(k, sum, abs_sum) for each NCHW output element of a 2-d convolution with groups = 1:
/// its output channel, sum x * w and sum |x * w| over its taps in double, with x(i) and w(i)
/// the decoded values of x's and w's i-th NCHW / KCRS elements.
template <class X, class W, class F>
void for_each_conv_sum(const CudaQConv& c, X x, W w, F f) {
  EXPECT_TRUE(c.x_dims.size() == 4 && c.groups == 1) << "for_each_conv_sum: 2-d, groups = 1";
  if (c.x_dims.size() != 4 || c.groups != 1) return;
  const int64_t n = c.x_dims[0], ch = c.x_dims[1], h = c.x_dims[2], wd = c.x_dims[3];
  const int64_t k = c.w_dims[0], r = c.w_dims[2], s = c.w_dims[3];
  const int64_t oh = (h + c.pad_begin[0] + c.pad_end[0] - c.dilation[0] * (r - 1) - 1) /
                         c.stride[0] + 1;
  const int64_t ow = (wd + c.pad_begin[1] + c.pad_end[1] - c.dilation[1] * (s - 1) - 1) /
                         c.stride[1] + 1;
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t kk = 0; kk < k; ++kk) {
      for (int64_t y = 0; y < oh; ++y) {
        for (int64_t xo = 0; xo < ow; ++xo) {
          double sum = 0.0, abs_sum = 0.0;
          for (int64_t cc = 0; cc < ch; ++cc) {
            for (int64_t i = 0; i < r; ++i) {
              for (int64_t j = 0; j < s; ++j) {
                const int64_t iy = y * c.stride[0] - c.pad_begin[0] + i * c.dilation[0];
                const int64_t ix = xo * c.stride[1] - c.pad_begin[1] + j * c.dilation[1];
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                const double p = static_cast<double>(x(((b * ch + cc) * h + iy) * wd + ix)) *
                                 w(((kk * ch + cc) * r + i) * s + j);
                sum += p;
                abs_sum += std::fabs(p);
              }
            }
          }
          f(kk, sum, abs_sum);
        }
      }
    }
  }
}

/// Per NCHW output element of a 2-d FP8 convolution with groups = 1: 2^-10 of sum |x * w| over
/// its taps, in the requantized output's units (x_scale * w_scale[k] / out_scale). That is the
/// bound expect_fp8_within_one_code takes for the tensor cores' FP8 sums: 16 times the ~2^-14 of
/// Hopper's accumulator, which leaves room for the accumulations between promotions.
std::vector<float> fp8_conv_sum_error(const CudaQConv& c, const TestTensor& x,
                                      const std::vector<uint8_t>& w, float x_scale,
                                      const std::vector<float>& w_scale, float out_scale) {
  std::vector<float> bound;
  for_each_conv_sum(
      c, [&](int64_t i) { return f8e4m3_to_f32(x.bytes[static_cast<size_t>(i)]); },
      [&](int64_t i) { return f8e4m3_to_f32(w[static_cast<size_t>(i)]); },
      [&](int64_t kk, double, double abs_sum) {
        const float unit =
            x_scale * w_scale[static_cast<size_t>(kk) % w_scale.size()] / out_scale;
        bound.push_back(static_cast<float>(abs_sum * unit / 1024.0));
      });
  return bound;
}

/// One int8 output element as the reference computes it before rounding (value, in int8
/// steps) and how far another order of the same f32 arithmetic may move it (window).
struct TieValue {
  double value = 0.0, window = 0.0;
};

/// Per NCHW output element of a 2-d INT8 convolution with groups = 1 that requantizes to int8:
/// the value the reference rounds (the scaled, biased sum plus the residual's NCHW values when
/// given, rounded to the layer's float type, after the relu, over out_scale), in double, and
/// its window: 2^-10 for the f32 steps' last bits, plus, for a 16-bit float type, one ulp of
/// that type at the value over out_scale (a last-bit difference before that rounding moves the
/// value by a whole ulp). expect_int8_within_ties takes them.
std::vector<TieValue> int8_requantized_values(const CudaQConv& c, const TestTensor& x,
                                              const std::vector<int8_t>& w, float x_scale,
                                              const std::vector<float>& w_scale,
                                              const std::vector<float>& bias, float out_scale,
                                              const std::vector<float>& residual) {
  const int mantissa_bits = c.out == DataType::kF16 ? 10 : c.out == DataType::kBF16 ? 7 : 0;
  std::vector<TieValue> values;
  for_each_conv_sum(
      c, [&](int64_t i) { return static_cast<int8_t>(x.bytes[static_cast<size_t>(i)]); },
      [&](int64_t i) { return w[static_cast<size_t>(i)]; },
      [&](int64_t kk, double sum, double) {
        double v = sum * x_scale * w_scale[static_cast<size_t>(kk) % w_scale.size()];
        if (!bias.empty()) v += bias[static_cast<size_t>(kk)];
        if (!residual.empty()) v += residual[values.size()];
        // The reference rounds to the layer's float type before the requantization.
        v = TestTensor::floats(c.out, {1}, {static_cast<float>(v)}).to_floats()[0];
        if (c.relu) v = std::max(v, 0.0);
        double window = 1.0 / 1024.0;
        if (mantissa_bits > 0 && v != 0.0) {
          int e = 0;
          std::frexp(v, &e);  // |v| in [2^(e-1), 2^e)
          window += std::ldexp(1.0, e - 1 - mantissa_bits) / out_scale;
        }
        values.push_back({v / out_scale, window});
      });
  return values;
}

/// int8 outputs of a path that computes the requantized value in another order than the
/// reference (cuDNN's graph: the scales one after another, a division for the reciprocal's
/// product): equal bytes, except that an element whose value lies within its window of a
/// rounding tie (x.5; int8_requantized_values) may round to the tie's other side. Those
/// last-bit differences can only move such an element; a wrong rounding mode or clamp moves
/// others. (Rounding at exact ties is checked with exact scales: the "exact ties" case.)
void expect_int8_within_ties(const std::vector<uint8_t>& got, const std::vector<uint8_t>& ref,
                             const std::string& label, const std::vector<TieValue>& values) {
  ASSERT_EQ(got.size(), ref.size()) << label;
  ASSERT_EQ(values.size(), got.size()) << label;
  size_t ties = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] == ref[i]) continue;
    const int g = static_cast<int8_t>(got[i]), r = static_cast<int8_t>(ref[i]);
    const double v = values[i].value;
    const bool at_tie = std::fabs(v - std::floor(v) - 0.5) < values[i].window;
    const bool other_side =
        g == static_cast<int>(std::floor(v)) || g == static_cast<int>(std::ceil(v));
    EXPECT_TRUE(at_tie && other_side && std::abs(g - r) == 1)
        << label << " element " << i << ": " << g << " against " << r << " (value " << v
        << ", window " << values[i].window << ")";
    ++ties;
  }
  EXPECT_LE(ties, got.size() / 100 + 1) << label << ": " << ties << " of " << got.size()
                                        << " int8 values on the other side of a tie";
}

void check_convolution(const CudaQConv& c, const std::string& what) {
  Network net;
  const DataType xdt = c.fp8 ? DataType::kF8E4M3
                     : c.zero_point >= 0 ? DataType::kU8 : DataType::kI8;
  Tensor* x = net.add_input("x", xdt, Shape(c.x_dims.begin(), c.x_dims.end()));
  int64_t wn = 1;
  for (int64_t d : c.w_dims) wn *= d;
  std::vector<int8_t> w8(static_cast<size_t>(wn));
  std::vector<uint8_t> wf(w8.size());
  for (size_t i = 0; i < w8.size(); ++i) {
    w8[i] = static_cast<int8_t>((static_cast<int>(i) * 41) % 255 - 127);
    wf[i] = f32_to_f8e4m3(static_cast<float>(w8[i]) * 0.25f);
  }
  const int64_t k = c.w_dims[0];
  Tensor* w = net.add_constant(c.fp8 ? Weights::from_vector(DataType::kF8E4M3, c.w_dims, wf)
                                     : Weights::from_vector(DataType::kI8, c.w_dims, w8))
                  ->output();
  std::vector<float> ws;
  for (int64_t j = 0; j < (c.per_channel ? k : 1); ++j) {
    ws.push_back(c.w_scale_unit * static_cast<float>(j % 5 + 1));
  }
  std::vector<Tensor*> inputs{x, w, f32_constant(net, {c.x_scale}), f32_constant(net, ws)};
  std::vector<float> bias;  // as the layer holds it (rounded to the float type)
  if (c.bias) {
    std::vector<float> bv;
    for (int64_t j = 0; j < k; ++j) bv.push_back(0.05f * static_cast<float>(j % 9) - 0.2f);
    const TestTensor bt = TestTensor::floats(c.out, {k}, bv);
    bias = bt.to_floats();
    inputs.push_back(net.add_constant(Weights::copy(c.out, {k}, bt.bytes.data()))->output());
  }
  QuantizedConvolutionParams p;
  p.stride = c.stride;
  p.padding_begin = c.pad_begin;
  p.padding_end = c.pad_end;
  p.dilation = c.dilation;
  p.groups = c.groups;
  p.out = c.out;
  p.epilogue.fused_activation = c.relu;
  if (c.requantize) {
    inputs.resize(5, nullptr);
    inputs.push_back(f32_constant(net, {c.out_scale}));
    p.requantize.enabled = true;
    p.requantize.quant_min = c.quant_min;
    if (c.fp8) p.requantize.to = DataType::kF8E4M3;
  }
  if (c.zero_point >= 0) {
    inputs.resize(6, nullptr);
    inputs.push_back(net.add_constant(Weights::from_vector(DataType::kI32, {1},
                                                           std::vector<int32_t>{c.zero_point}))
                         ->output());
  }
  if (!c.residual_dims.empty()) {
    inputs.resize(7, nullptr);
    inputs.push_back(net.add_input("r", c.residual_int8 ? DataType::kI8 : c.out,
                                   Shape(c.residual_dims.begin(), c.residual_dims.end())));
    if (c.residual_int8) inputs.push_back(f32_constant(net, {c.residual_scale}));
  }
  net.mark_output(net.add_layer(p, inputs, "qconv")->output(), "y");
  TestTensor xt;
  if (c.fp8) {
    const TestTensor f = TestTensor::random(DataType::kF32, c.x_dims, 6, -300.0f, 300.0f);
    xt.dtype = DataType::kF8E4M3;
    xt.dims = c.x_dims;
    for (float v : f.to_floats()) xt.bytes.push_back(f32_to_f8e4m3(v));
  } else if (c.zero_point >= 0) {
    xt = TestTensor::random(DataType::kU8, c.x_dims, 6, 0.0f, 256.0f);
  } else {
    xt = TestTensor::random(DataType::kI8, c.x_dims, 6, -127.0f, 128.0f);
  }
  std::vector<TestTensor> ins{xt};
  if (!c.residual_dims.empty()) {
    ins.push_back(c.residual_int8
                      ? TestTensor::random(DataType::kI8, c.residual_dims, 7, -127.0f, 128.0f)
                      : TestTensor::random(c.out, c.residual_dims, 7, -1.0f, 1.0f));
  }
  {
    // The implementation the plan records: cuDNN's path, or the direct kernel, by shape.
    test::CudaRunner runner(net, ins, {}, 3);
    const std::string json = runner.inspect_json();
    EXPECT_EQ(json.find("cuda.QuantizedConvolution.direct") != std::string::npos, c.direct)
        << what << ": " << json;
  }
  // NCHW, and NHWC (the channels_last region; 2-d layers with groups = 1 join it, a residual
  // with them).
  std::vector<float> sum_error;
  if (c.fp8 && c.requantize && !c.direct) {  // the direct kernel sums as the reference
    sum_error = fp8_conv_sum_error(c, xt, wf, c.x_scale, ws, c.out_scale);
  }
  check_bytes_and_floats(net, ins, what + " (NCHW)", ChannelsLast::kOff, c.fp8, sum_error);
  // Under channels_last, the cases the implicit-GEMM graph takes (quantized_conv.cpp's
  // run_graph) run there on Hopper; the others never do.
  const int64_t multiple = c.fp8 ? 16 : 4;
  const bool takes_graph =
      graph_selected(c.fp8) && c.x_dims.size() == 4 && c.groups == 1 && c.zero_point < 0 &&
      c.x_dims[1] % multiple == 0 && c.w_dims[0] % multiple == 0 &&
      !(c.residual_int8 && !c.requantize) &&  // cuDNN had no engine for that one (run_graph)
      !igemm_selected(c);
  // The graph requantizes to int8 from the scales applied one by one (the reference multiplies
  // by their product first): at a rounding tie a value may land on the tie's other side.
  // With exact scales (powers of two, no bias) both orders are exact: bytes must match.
  std::vector<TieValue> int8_values;
  if (takes_graph && c.requantize && !c.fp8 && !c.exact_scales) {
    std::vector<float> residual;  // as the layer reads it (layers.h), one per element
    if (!c.residual_dims.empty() && c.residual_int8) {
      for (const uint8_t q : ins.back().bytes) {
        const float v = static_cast<float>(static_cast<int8_t>(q)) * c.residual_scale;
        residual.push_back(TestTensor::floats(c.out, {1}, {v}).to_floats()[0]);
      }
    } else if (!c.residual_dims.empty()) {
      residual = ins.back().to_floats();
    }
    int8_values =
        int8_requantized_values(c, xt, w8, c.x_scale, ws, bias, c.out_scale, residual);
  }
  const int64_t igemm_before = cuda::igemm_launches();
  const int64_t graph_runs = graph_executions_during([&] {
    check_bytes_and_floats(net, ins, what + " (channels_last)", ChannelsLast::kOn, c.fp8,
                           sum_error, int8_values);
  });
  // Ember's implicit GEMM finishes its int32 sums with the epilogue pass's arithmetic: the
  // bytes matched above without a tie window.
  EXPECT_EQ(cuda::igemm_launches() > igemm_before, igemm_selected(c)) << what;
  if (!takes_graph) {
    EXPECT_EQ(graph_runs, 0) << what;
  } else if (expect_quantized_graph_engines()) {
    EXPECT_GT(graph_runs, 0) << what << ": cuDNN's graph did not run it";
  }
}

/// The cases of the library paths (quantized_conv.cpp): by default cuDNN's implicit-GEMM graph
/// for the channels_last layers it takes and im2col + cuBLASLt's INT8 GEMM for the rest; the
/// GEMM for all with EMBER_QCONV=gemm; cuDNN's legacy INT8 convolution with EMBER_QCONV=cudnn.
void check_int8_convolutions() {
  // C = 3 (an RGB first layer): channels packed up to 4; symmetric padding, per-channel.
  check_convolution({{2, 3, 32, 32}, {16, 3, 7, 7}, {2, 2}, {3, 3}, {3, 3}, {1, 1}},
                    "rgb stem 7x7/2");
  // Channels multiples of 4, asymmetric padding, dilation, f16 output with relu.
  CudaQConv mid{{4, 32, 14, 14}, {64, 32, 3, 3}, {1, 1}, {1, 0}, {0, 1}, {2, 1}};
  mid.out = DataType::kF16;
  mid.relu = true;
  check_convolution(mid, "3x3 asymmetric padding, dilation, f16 + relu");
  // K not a multiple of 4, per-tensor weight scale, no bias, bf16 output.
  CudaQConv odd{{1, 8, 9, 9}, {10, 8, 1, 1}, {1, 1}, {0, 0}, {0, 0}, {1, 1}};
  odd.per_channel = false;
  odd.bias = false;
  odd.out = DataType::kBF16;
  check_convolution(odd, "1x1, K = 10, per-tensor, bf16");
  // 1-d (cuDNN sees height 1).
  check_convolution({{2, 8, 40}, {12, 8, 5}, {2}, {2}, {1}, {1}}, "1-d");
  // Relu and requantization to int8: in the epilogue kernel (bytes must match), and under
  // channels_last in cuDNN's graph (bytes must match but at rounding ties).
  CudaQConv requant{{2, 16, 10, 10}, {16, 16, 3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}};
  requant.relu = true;
  requant.requantize = true;
  check_convolution(requant, "relu + requantize");
  CudaQConv requant_direct = requant;
  requant_direct.groups = 4;
  requant_direct.w_dims = {16, 4, 3, 3};
  requant_direct.direct = true;
  check_convolution(requant_direct, "grouped, relu + requantize (direct kernel)");
  // A 1x1 convolution with stride 1 and no padding: the NHWC input is the GEMM operand (no
  // im2col); C = 64 copies 16 bytes per thread elsewhere. With stride 2 it takes the im2col.
  CudaQConv pointwise{{2, 64, 7, 7}, {32, 64, 1, 1}, {1, 1}, {0, 0}, {0, 0}, {1, 1}};
  pointwise.out = DataType::kF16;
  check_convolution(pointwise, "1x1 stride 1, no im2col");
  CudaQConv strided = pointwise;  // 9x9 to 5x5: a plane not a multiple of 4
  strided.x_dims = {2, 64, 9, 9};
  strided.stride = {2, 2};
  strided.requantize = true;
  strided.quant_min = -127;  // ember.quantize's range: the graph clamps to it
  check_convolution(strided, "1x1 stride 2, requantize");
  // uint8 activations with a zero point (PT2E's default): shifted into int8, the padding
  // filled with the shifted zero point, the sums corrected in the epilogue.
  CudaQConv asym{{2, 3, 12, 12}, {8, 3, 3, 3}, {1, 1}, {1, 1}, {1, 0}, {1, 1}};
  asym.zero_point = 131;
  check_convolution(asym, "uint8 + zero point, asymmetric padding");
  CudaQConv asym_wide = asym;  // the padding word of 16 bytes holds the shifted zero point
  asym_wide.x_dims = {2, 16, 12, 12};
  asym_wide.w_dims = {8, 16, 3, 3};
  check_convolution(asym_wide, "uint8 + zero point, C = 16");
  CudaQConv asym_direct = asym;
  asym_direct.x_dims = {2, 4, 12, 12};
  asym_direct.w_dims = {8, 2, 3, 3};
  asym_direct.groups = 2;
  asym_direct.direct = true;
  check_convolution(asym_direct, "uint8 + zero point, grouped (direct kernel)");
  // A residual (ResNet's shortcut) before the relu: in the product epilogue (channels_last,
  // K = 16), the one-element epilogue (NCHW, and channels_last with K = 10 padded to 12), the
  // direct kernel (grouped).
  CudaQConv residual{{2, 16, 10, 10}, {16, 16, 3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}};
  residual.out = DataType::kF16;
  residual.relu = true;
  residual.residual_dims = {2, 16, 10, 10};
  check_convolution(residual, "3x3 f16 + residual + relu");
  CudaQConv residual_odd = odd;
  residual_odd.residual_dims = {1, 10, 9, 9};
  check_convolution(residual_odd, "1x1, K = 10, bf16 + residual");
  CudaQConv residual_direct = residual;
  residual_direct.groups = 4;
  residual_direct.w_dims = {16, 4, 3, 3};
  residual_direct.direct = true;
  check_convolution(residual_direct, "grouped + residual + relu (direct kernel)");
  // An int8 residual with its scale (ResNet's shortcut read from the previous block's int8
  // output, ember.quantize's quantize_residuals): into an f16 output, and requantized to int8
  // (the block's output); a 1x1 expansion as ResNet's, the 3x3 above, and the direct kernel.
  CudaQConv residual8{{2, 16, 10, 10}, {32, 16, 1, 1}, {1, 1}, {0, 0}, {0, 0}, {1, 1}};
  residual8.out = DataType::kF16;
  residual8.relu = true;
  residual8.residual_dims = {2, 32, 10, 10};
  residual8.residual_int8 = true;
  check_convolution(residual8, "1x1 f16 + int8 residual + relu");
  CudaQConv residual8_requant = residual8;
  residual8_requant.requantize = true;
  check_convolution(residual8_requant, "1x1 f16 + int8 residual + relu, requantized");
  CudaQConv residual8_3x3 = residual;
  residual8_3x3.residual_int8 = true;
  residual8_3x3.requantize = true;
  check_convolution(residual8_3x3, "3x3 f16 + int8 residual + relu, requantized");
  CudaQConv residual8_direct = residual_direct;
  residual8_direct.residual_int8 = true;
  residual8_direct.requantize = true;
  check_convolution(residual8_direct, "grouped + int8 residual + relu, requantized (direct)");
  // A float shortcut into a requantizing convolution (ResNet's downsampling block: the
  // shortcut is the 1x1 downsample's f16 output, the block's output int8).
  CudaQConv residual_requant = residual;
  residual_requant.requantize = true;
  check_convolution(residual_requant, "3x3 f16 + residual + relu, requantized");
  // Exact rounding ties: x_scale and w_scale / 16 are powers of two times 1..5, no bias,
  // out_scale 1, C = 4 taps of a 1x1: value = sum * m / 256, so about 1 in 256 elements lands
  // exactly on x.5, and each must round half to even (and clamp to [-127, 127]) as the
  // reference does.
  CudaQConv ties{{2, 4, 10, 10}, {16, 4, 1, 1}, {1, 1}, {0, 0}, {0, 0}, {1, 1}};
  ties.bias = false;
  ties.requantize = true;
  ties.x_scale = 0.0625f;
  ties.w_scale_unit = 0.0625f;
  ties.out_scale = 1.0f;
  ties.quant_min = -127;
  ties.exact_scales = true;
  check_convolution(ties, "1x1 requantized at exact rounding ties");
  // Several 128 x 128 tiles of the implicit GEMM: M = 800 output pixels, K = 160 channels (a
  // partial second column of tiles), a reduction of 288 (4.5 steps of 64), padding, f16 + relu
  // requantized.
  CudaQConv tiles{{2, 32, 20, 20}, {160, 32, 3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}};
  tiles.out = DataType::kF16;
  tiles.relu = true;
  tiles.requantize = true;
  check_convolution(tiles, "3x3, 800 x 160 output, requantized");
}

TEST(CudaQuantize, Int8ConvolutionThroughTheCudnnGraphMatchesTheReference) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  unsetenv("EMBER_QCONV");
  const int64_t ran = graph_executions_during(check_int8_convolutions);
  if (expect_quantized_graph_engines()) EXPECT_GT(ran, 0);
}

// What the INT8 implicit-GEMM kernel takes is decided on the host (igemm_covers): checked
// without a GPU (CI runs it).
TEST(CudaQuantize, ImplicitGemmCoversOnlyWhatItComputesExactly) {
  alignas(16) static const int8_t buffer[32] = {};
  const void* x = buffer;
  const void* w = buffer;
  semantics::ConvGeometry g;  // ResNet's 3x3 64 -> 64 at 56x56, b32, NHWC
  g.channels_last = true;
  g.batch = 32;
  g.in_channels = g.out_channels = 64;
  g.in[1] = g.in[2] = g.out[1] = g.out[2] = 56;
  g.kernel[1] = g.kernel[2] = 3;
  g.pad[1] = g.pad[2] = 1;
  EXPECT_EQ(cuda::igemm_covers(g, DataType::kI8, false, x, w), "");
  const auto refused = [&](semantics::ConvGeometry h, DataType t, bool zp, const void* px,
                           const std::string& why) {
    EXPECT_EQ(cuda::igemm_covers(h, t, zp, px, w), why);
  };
  semantics::ConvGeometry nchw = g;
  nchw.channels_last = false;
  refused(nchw, DataType::kI8, false, x, "its activations are not NHWC");
  semantics::ConvGeometry grouped = g;
  grouped.groups = 2;
  refused(grouped, DataType::kI8, false, x, "it is grouped");
  semantics::ConvGeometry volumetric = g;
  volumetric.in[0] = volumetric.out[0] = 4;
  refused(volumetric, DataType::kI8, false, x, "it is 3-d");
  refused(g, DataType::kU8, false, x, "its activations are not symmetric int8");
  refused(g, DataType::kI8, true, x, "its activations are not symmetric int8");
  refused(g, DataType::kF8E4M3, false, x, "its activations are not symmetric int8");
  semantics::ConvGeometry rgb = g;
  rgb.in_channels = 3;
  refused(rgb, DataType::kI8, false, x, "its input channels are not a multiple of 16");
  refused(g, DataType::kI8, false, buffer + 4, "an operand is not 16-byte aligned");
  semantics::ConvGeometry huge = g;
  huge.batch = int64_t{1} << 20;  // 3.3e12 output pixels
  refused(huge, DataType::kI8, false, x, "a size does not fit its 32-bit indices");
  semantics::ConvGeometry long_reduction = g;
  long_reduction.in_channels = 16384;  // 9 * 16384 taps > 2^17
  refused(long_reduction, DataType::kI8, false, x, "its reduction is longer than 2^17");
  // A product as the 1x1 convolution quantized_matmul.cpp makes of it: m rows of k channels.
  semantics::ConvGeometry product;
  product.channels_last = true;
  product.batch = 4096;
  product.in_channels = 768;
  product.out_channels = 3072;
  EXPECT_EQ(cuda::igemm_covers(product, DataType::kI8, false, x, w), "");
}

TEST(CudaQuantize, Int8ConvolutionThroughTheImplicitGemmKernelMatchesTheReference) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  const test::ScopedEnv igemm("EMBER_QCONV", "igemm");
  check_int8_convolutions();
}

TEST(CudaQuantize, Int8ConvolutionThroughTheGemmMatchesTheReference) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  setenv("EMBER_QCONV", "gemm", 1);
  EXPECT_EQ(graph_executions_during(check_int8_convolutions), 0);
  unsetenv("EMBER_QCONV");
}

/// The FP8 cases. The comments below name the im2col + cuBLASLt path each case covers (the
/// default); with EMBER_QCONV=graph the channels_last layers with C and K multiples of 16 take
/// cuDNN's graph instead (the whole epilogue in it).
void check_fp8_convolutions() {
  // 16-bit outputs: the FP8 GEMM sums in its own order and width, which a 16-bit output rounds
  // away (as Fp8GemmThroughCublasLtMatchesTheReference). Below sm_89 every case takes the
  // direct kernel (the GEMM refuses), which sums as the reference does.
  CudaQConv stem{{2, 3, 20, 20}, {16, 3, 7, 7}, {2, 2}, {3, 3}, {3, 3}, {1, 1}};
  stem.fp8 = true;
  stem.per_channel = false;
  stem.out = DataType::kF16;
  check_convolution(stem, "fp8 stem 7x7/2, C = 3 (channels padded to 16)");
  CudaQConv mid{{2, 32, 10, 10}, {24, 32, 3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}};
  mid.fp8 = true;
  mid.per_channel = false;
  mid.out = DataType::kBF16;
  mid.relu = true;
  check_convolution(mid, "fp8 3x3, K = 24, bf16 + relu");
  // K a multiple of 16: under channels_last cuBLASLt writes the output itself (bias, relu).
  CudaQConv wide = mid;
  wide.w_dims = {32, 32, 3, 3};
  check_convolution(wide, "fp8 3x3, K = 32, bf16 + relu");
  // Requantized to FP8 (the next convolution's input): under channels_last cuBLASLt's 16-bit
  // value and one quantizing pass (fp8_gemm_requantized); NCHW, the pass after f32 sums.
  CudaQConv requant = wide;
  requant.out = DataType::kF16;
  requant.requantize = true;
  check_convolution(requant, "fp8 3x3, K = 32, relu, requantized to fp8");
  // A residual before the relu: cuBLASLt's C under channels_last with K = 32 (beta 1, RELU_BIAS
  // epilogue); the epilogue pass after f32 sums for NCHW and for K = 24.
  CudaQConv residual = wide;
  residual.residual_dims = {2, 32, 10, 10};
  check_convolution(residual, "fp8 3x3, K = 32, bf16 + residual + relu");
  CudaQConv residual_mid = mid;
  residual_mid.residual_dims = {2, 24, 10, 10};
  check_convolution(residual_mid, "fp8 3x3, K = 24, bf16 + residual + relu");
  // Per-channel weight scales (what a batch norm folded into an FP8 convolution's scales
  // makes): under channels_last with K = 32 cuBLASLt's outer-vector scale mode where it has a
  // kernel for it (the activation's scale spread over the rows), else the f32 sums; the same
  // values either way, with a residual and requantized.
  CudaQConv folded = wide;
  folded.per_channel = true;
  check_convolution(folded, "fp8 3x3, K = 32, per-channel scales, bf16 + relu");
  CudaQConv folded_residual = residual;
  folded_residual.per_channel = true;
  check_convolution(folded_residual, "fp8 3x3, K = 32, per-channel scales, residual + relu");
  CudaQConv folded_requant = requant;
  folded_requant.per_channel = true;
  check_convolution(folded_requant, "fp8 3x3, K = 32, per-channel scales, requantized");
  // A small out_scale: most values beyond E4M3's 448, which saturate (the reference's
  // SATFINITE) rather than turn into NaN.
  CudaQConv saturated = folded_requant;
  saturated.out_scale = 0.0005f;
  check_convolution(saturated, "fp8 3x3, K = 32, requantized beyond 448 (saturates)");
  CudaQConv grouped = mid;
  grouped.groups = 2;
  grouped.w_dims = {24, 16, 3, 3};
  grouped.direct = true;
  check_convolution(grouped, "fp8 grouped (direct kernel)");
}

TEST(CudaQuantize, Fp8ConvolutionMatchesTheReference) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  // The default: im2col + cuBLASLt's FP8 GEMM (cuDNN's FP8 graph measured slower).
  unsetenv("EMBER_QCONV");
  EXPECT_EQ(graph_executions_during(check_fp8_convolutions), 0);
  // EMBER_QCONV=graph: cuDNN's implicit-GEMM graph for the channels_last cases it takes.
  setenv("EMBER_QCONV", "graph", 1);
  const int64_t ran = graph_executions_during(check_fp8_convolutions);
  if (expect_quantized_graph_engines()) EXPECT_GT(ran, 0);
  unsetenv("EMBER_QCONV");
}

TEST(CudaQuantize, Int8ConvolutionThroughCudnnMatchesTheReference) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  setenv("EMBER_QCONV", "cudnn", 1);
  check_int8_convolutions();
  unsetenv("EMBER_QCONV");
}

TEST(CudaQuantize, Int8ConvolutionOutsideCudnnRunsTheDirectKernel) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  CudaQConv depthwise{{2, 8, 10, 10}, {8, 1, 3, 3}, {1, 1}, {1, 1}, {1, 1}, {1, 1}, 8};
  depthwise.direct = true;
  check_convolution(depthwise, "depthwise (groups = 8)");
  CudaQConv vol{{1, 4, 4, 6, 6}, {8, 4, 2, 3, 3}, {1, 1, 1}, {0, 1, 1}, {0, 1, 1}, {1, 1, 1}};
  vol.direct = true;
  vol.out = DataType::kF16;
  check_convolution(vol, "3-d");
}

TEST(CudaQuantize, QdqConvolutionFusesAndMatchesTheReference) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  // The builder's fusion end to end: f32 x -> Quantize -> Dequantize -> Convolution with a
  // dequantized int8 constant weight and a bias, then relu.
  Network net;
  Tensor* x = net.add_input("x", DataType::kF32, {2, 16, 12, 12});
  Tensor* sx = f32_constant(net, {0.03f});
  Tensor* q = net.add_quantize(x, sx, nullptr, QuantizeParams{}, "qx")->output();
  Tensor* xd = net.add_dequantize(q, sx, nullptr, DequantizeParams{}, "dqx")->output();
  std::vector<int8_t> w8(32 * 16 * 3 * 3);
  for (size_t i = 0; i < w8.size(); ++i) {
    w8[i] = static_cast<int8_t>((static_cast<int>(i) * 23) % 255 - 127);
  }
  Tensor* wq = net.add_constant(Weights::from_vector(DataType::kI8, {32, 16, 3, 3}, w8))->output();
  std::vector<float> ws(32);
  for (size_t j = 0; j < ws.size(); ++j) ws[j] = 0.001f * static_cast<float>(j % 4 + 1);
  DequantizeParams wp;
  wp.per_channel = true;
  Tensor* wd = net.add_dequantize(wq, f32_constant(net, ws), nullptr, wp, "dqw")->output();
  Tensor* b = f32_constant(net, std::vector<float>(32, 0.1f));
  ConvolutionParams cp;
  cp.stride = {1, 1};
  cp.padding_begin = cp.padding_end = {1, 1};
  cp.dilation = {1, 1};
  Tensor* y = net.add_convolution(xd, wd, b, cp, "conv")->output();
  net.mark_output(net.add_activation(y, ActivationType::kRelu, 0, 0, "relu")->output(), "y");
  const TestTensor xt = TestTensor::random(DataType::kF32, {2, 16, 12, 12}, 8, -3.0f, 3.0f);
  test::CudaRunner runner(net, {xt}, {}, 3);
  EXPECT_NE(runner.inspect_json().find("cuda.QuantizedConvolution"), std::string::npos);
  check_bytes_and_floats(net, {xt}, "fused Q/DQ convolution");
}

TEST(CudaQuantize, LayerNormQuantizedOutputMatchesTheReference) {
  if (!test::cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  // LayerNorm -> per-tensor Quantize becomes one norm with a quantized output
  // (quantize_norm_outputs) on every kernel that runs layer norms: the 16-bit vector kernel
  // (width % 8 == 0), the warp kernel (f32, or a width that is not a multiple of 8: 36) and the
  // block kernel (rows over 1024). With the float output kept, the quantized bytes must be
  // exactly the Quantize layer's math on the GPU's own float output; against the CPU reference
  // (whose 16-bit moments are in double, the vector kernel's in f32) the float output is within
  // tolerance and each quantized value within one step.
  for (DataType dtype : {DataType::kF32, DataType::kF16, DataType::kBF16}) {
    for (const int64_t width : {36, 40, 64, 768, 1536}) {  // 36: the 16-bit warp kernel too
      for (DataType q : {DataType::kI8, DataType::kF8E4M3}) {
        for (const bool keep_float : {true, false}) {
          const std::string what = std::string(dtype_name(dtype)) + " width " +
                                   std::to_string(width) + " to " + dtype_name(q) +
                                   (keep_float ? " with the float output" : "");
          SCOPED_TRACE(what);
          Network net;
          Tensor* x = net.add_input("x", dtype, {37, width});
          std::vector<float> g, b;
          for (int64_t j = 0; j < width; ++j) {
            g.push_back(0.5f + 0.001f * static_cast<float>(j));
            b.push_back(0.01f * static_cast<float>(j % 7) - 0.03f);
          }
          NormalizationParams np;
          np.axis = 1;
          Tensor* y = net.add_normalization(
                             x, net.add_constant(from_floats(dtype, {width}, g))->output(),
                             net.add_constant(from_floats(dtype, {width}, b))->output(), np, "ln")
                          ->output();
          QuantizeParams qp;
          qp.to = q;
          if (q == DataType::kI8) qp.quant_min = -127;
          const float scale = 0.02f;
          net.mark_output(net.add_quantize(y, f32_constant(net, {scale}), nullptr, qp, "q")
                              ->output(),
                          "y_q");
          if (keep_float) net.mark_output(y, "y");
          const TestTensor xv = TestTensor::random(dtype, {37, width}, 51, -3.0f, 3.0f);
          test::CudaRunner runner(net, {xv}, {}, 3);
          const std::string json = runner.inspect_json();
          EXPECT_EQ(json.find("cuda.Quantize"), std::string::npos) << json.substr(0, 2000);
          EXPECT_EQ(json.find("cuda.host"), std::string::npos);
          for (int run = 0; run < 2; ++run) {  // layer by layer, then the CUDA graph
            const auto got = runner.run({xv});
            const auto ref = test::run_network_direct(net, {xv});
            ASSERT_EQ(got.size(), keep_float ? 2u : 1u);
            ASSERT_EQ(got[0].dtype, q);
            const std::vector<uint8_t>& gq = got[0].bytes;
            const std::vector<uint8_t>& rq = ref[0].bytes;
            ASSERT_EQ(gq.size(), rq.size());
            if (keep_float) {
              test::expect_close(got[1], ref[1].to_floats(), dtype, what);
              const std::vector<float> yv = got[1].to_floats();
              for (size_t i = 0; i < yv.size(); ++i) {
                const uint8_t want =
                    q == DataType::kF8E4M3
                        ? f32_to_f8e4m3(yv[i] * (1.0f / scale))
                        : static_cast<uint8_t>(static_cast<int8_t>(std::fmin(
                              std::fmax(std::nearbyint(yv[i] * (1.0f / scale)), -127.0f),
                              127.0f)));
                ASSERT_EQ(gq[i], want) << "element " << i << " (float output " << yv[i] << ")";
              }
            }
            if (q == DataType::kF8E4M3) {
              expect_fp8_within_one_code(gq, rq, what);
            } else {
              for (size_t i = 0; i < gq.size(); ++i) {
                ASSERT_LE(std::abs(static_cast<int8_t>(gq[i]) - static_cast<int8_t>(rq[i])), 1)
                    << "element " << i;
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace ember::engine

#endif  // EMBER_WITH_CUDA
