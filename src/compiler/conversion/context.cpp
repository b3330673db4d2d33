// ConversionContext: the value -> engine tensor map and the helpers converters share.
#include <cmath>
#include <cstring>

#include "ember/compiler/conversion.h"
#include "ember/engine/half.h"
#include "ember/engine/weights.h"

namespace ember::compiler {

using engine::DataType;

namespace {

// Converts constant data of IR type `from` to engine dtype `to` (only the narrowing casts
// truncate_double allows; anything else is used in place).
engine::Weights constant_weights(const Value* v, DataType to) {
  std::vector<int64_t> dims = engine::shape_evaluate(v->shape(), {});
  const ConstantData& c = v->constant();
  if (c.data == nullptr) {
    throw Error("constant %" + v->name() + " has no data (a graph parsed from text?)");
  }
  const int64_t n = engine::dims_numel(dims);
  if (v->dtype() == ScalarType::kF64 && to == DataType::kF32) {
    std::vector<float> out(static_cast<size_t>(n));
    const auto* src = static_cast<const double*>(c.data.get());
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(src[i]);
    return engine::Weights::from_vector(to, std::move(dims), out);
  }
  if (v->dtype() == ScalarType::kI64 && to == DataType::kI32) {
    std::vector<int32_t> out(static_cast<size_t>(n));
    const auto* src = static_cast<const int64_t*>(c.data.get());
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(src[i]);
    return engine::Weights::from_vector(to, std::move(dims), out);
  }
  const auto own = to_engine_dtype(v->dtype());
  if (!own || *own != to) {
    throw Error("constant %" + v->name() + " of type " + scalar_type_name(v->dtype()) +
                " cannot be used as " + engine::dtype_name(to));
  }
  if (c.nbytes != static_cast<size_t>(n) * engine::dtype_size(to)) {
    throw Error("constant %" + v->name() + " holds " + std::to_string(c.nbytes) +
                " bytes, its shape needs " + std::to_string(n * engine::dtype_size(to)));
  }
  return engine::Weights::borrow(to, std::move(dims), c.data.get(), c.data);
}

}  // namespace

void ConversionContext::bind(const Value* v, engine::Tensor* t) { tensors_[v] = t; }

engine::Tensor* ConversionContext::tensor(const Value* v) {
  if (v == nullptr) throw Error("conversion: a null tensor argument");
  auto it = tensors_.find(v);
  if (it != tensors_.end()) return it->second;
  if (v->is_constant()) {
    engine::Weights w = constant_weights(v, engine_dtype(v->dtype()));
    engine::Tensor* t = net_.add_constant(std::move(w), "const/" + v->name())->output();
    tensors_[v] = t;
    return t;
  }
  throw Error("conversion: value %" + v->name() + " has no engine tensor (it is produced " +
              "outside this segment and is not a segment input)");
}

void ConversionContext::set_output(const Node& node, size_t i, engine::Tensor* t) {
  const Value* v = node.output(i);
  if (t->rank() != v->rank()) {
    throw Error(node.describe() + ": converter produced output " + std::to_string(i) +
                " of rank " + std::to_string(t->rank()) + " where PyTorch has rank " +
                std::to_string(v->rank()) + " " + engine::shape_to_string(v->shape()));
  }
  const DataType want = engine_dtype(v->dtype());
  tensors_[v] = cast(t, want, layer_name(node, "out_cast"));
}

DataType ConversionContext::engine_dtype(ScalarType t) const {
  switch (t) {
    case ScalarType::kF64:
      if (settings_.truncate_double) return DataType::kF32;
      throw Error("f64 tensors run in engines only with truncate_double=True");
    case ScalarType::kI64:
      return settings_.truncate_double ? DataType::kI32 : DataType::kI64;
    case ScalarType::kI16:
      throw Error("i16 tensors are not supported by the engine");
    default:
      return *to_engine_dtype(t);
  }
}

engine::Tensor* ConversionContext::cast(engine::Tensor* t, DataType to, const std::string& name) {
  if (t->dtype() == to) return t;
  return net_.add_cast(t, to, name.empty() ? "" : name + "_" + std::to_string(name_counter_++))
      ->output();
}

engine::Tensor* ConversionContext::scalar(double value, DataType dtype, int rank) {
  std::vector<int64_t> dims(static_cast<size_t>(rank), 1);
  engine::Weights w;
  switch (dtype) {
    case DataType::kF32:
      w = engine::Weights::from_vector(dtype, dims, std::vector<float>{static_cast<float>(value)});
      break;
    case DataType::kI32:
      w = engine::Weights::from_vector(dtype, dims,
                                       std::vector<int32_t>{static_cast<int32_t>(value)});
      break;
    case DataType::kI64:
      w = engine::Weights::from_vector(dtype, dims,
                                       std::vector<int64_t>{static_cast<int64_t>(value)});
      break;
    case DataType::kI8:
      w = engine::Weights::from_vector(dtype, dims,
                                       std::vector<int8_t>{static_cast<int8_t>(value)});
      break;
    case DataType::kU8:
      w = engine::Weights::from_vector(dtype, dims,
                                       std::vector<uint8_t>{static_cast<uint8_t>(value)});
      break;
    case DataType::kBool:
      w = engine::Weights::from_vector(dtype, dims,
                                       std::vector<uint8_t>{static_cast<uint8_t>(value != 0.0)});
      break;
    case DataType::kF8E4M3:
      w = engine::Weights::from_vector(
          dtype, dims, std::vector<uint8_t>{engine::f32_to_f8e4m3(static_cast<float>(value))});
      break;
    case DataType::kF16:
    case DataType::kBF16: {
      // Made in f32 and cast, so the rounding is the engine's own.
      engine::Tensor* f = scalar(value, DataType::kF32, rank);
      return net_.add_cast(f, dtype)->output();
    }
  }
  return net_.add_constant(std::move(w))->output();
}

engine::Tensor* ConversionContext::int_vector(const std::vector<int64_t>& values, DataType dtype) {
  const std::vector<int64_t> dims{static_cast<int64_t>(values.size())};
  if (dtype == DataType::kI64) {
    return net_.add_constant(engine::Weights::from_vector(dtype, dims, values))->output();
  }
  if (dtype != DataType::kI32) throw Error("int_vector: dtype must be i32 or i64");
  std::vector<int32_t> v(values.begin(), values.end());
  return net_.add_constant(engine::Weights::from_vector(dtype, dims, v))->output();
}

engine::Tensor* ConversionContext::operand(const Node& node, size_t i, DataType dtype, int rank) {
  if (node.arg_is_scalar(i)) return scalar(node.arg_double(i), dtype, rank);
  return cast(input(node, i), dtype);
}

engine::Tensor* ConversionContext::broadcast_rank(engine::Tensor* t, int rank) {
  if (t->rank() >= rank) return t;
  engine::Shape shape(static_cast<size_t>(rank - t->rank()), DimExpr(1));
  shape.insert(shape.end(), t->shape().begin(), t->shape().end());
  return net_.add_reshape(t, shape)->output();
}

std::string ConversionContext::layer_name(const Node& node, const std::string& suffix) {
  std::string base = node.fx_name().empty() ? node.output(0)->name() : node.fx_name();
  if (!suffix.empty()) base += "/" + suffix;
  return base + "#" + std::to_string(name_counter_++);
}

int64_t normalize_dim(int64_t dim, int64_t rank, const Node& node) {
  const int64_t r = rank == 0 ? 1 : rank;  // PyTorch lets a 0-d tensor take dim 0 / -1.
  if (dim < -r || dim >= r) {
    throw Error(node.describe() + ": dim " + std::to_string(dim) + " is out of range for rank " +
                std::to_string(rank));
  }
  return dim < 0 ? dim + r : dim;
}

}  // namespace ember::compiler
