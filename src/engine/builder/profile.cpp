// Optimization profiles: symbol ranges, given directly or through whole input shapes.
#include <set>

#include "ember/engine/builder.h"

namespace ember::engine {

OptimizationProfile& OptimizationProfile::set_range(const std::string& symbol, int64_t min,
                                                    int64_t opt, int64_t max) {
  if (!(0 <= min && min <= opt && opt <= max)) {
    throw Error("profile: symbol '" + symbol + "' needs 0 <= min <= opt <= max, got " +
                std::to_string(min) + ", " + std::to_string(opt) + ", " + std::to_string(max));
  }
  ranges_[symbol] = DimRange{min, opt, max};
  return *this;
}

OptimizationProfile& OptimizationProfile::set_dimensions(const std::string& input,
                                                         std::vector<int64_t> min,
                                                         std::vector<int64_t> opt,
                                                         std::vector<int64_t> max) {
  if (min.size() != opt.size() || opt.size() != max.size()) {
    throw Error("profile: input '" + input + "': min, opt and max shapes need one rank");
  }
  input_dims_.push_back({input, std::move(min), std::move(opt), std::move(max)});
  return *this;
}

void OptimizationProfile::resolve(const Network& network) {
  for (const InputDims& d : input_dims_) {
    const Tensor* t = network.find_tensor(d.input);
    if (t == nullptr || !t->is_input()) {
      std::string names;
      for (const Tensor* in : network.inputs()) names += (names.empty() ? "" : ", ") + in->name();
      throw Error("profile: no network input named '" + d.input + "' (inputs: " + names + ")");
    }
    if (static_cast<int>(d.min.size()) != t->rank()) {
      throw Error("profile: input '" + d.input + "' has rank " + std::to_string(t->rank()) +
                  " " + shape_to_string(t->shape()) + ", profile shapes have rank " +
                  std::to_string(d.min.size()));
    }
    for (size_t i = 0; i < d.min.size(); ++i) {
      const DimExpr& e = t->shape()[i];
      const std::string where = "profile: input '" + d.input + "' dim " + std::to_string(i);
      if (e.is_constant()) {
        if (d.min[i] != e.constant() || d.opt[i] != e.constant() || d.max[i] != e.constant()) {
          throw Error(where + " is the constant " + std::to_string(e.constant()) +
                      "; min/opt/max must all equal it");
        }
        continue;
      }
      const std::string& sym = e.symbol_name();
      const auto it = ranges_.find(sym);
      if (it != ranges_.end()) {
        const DimRange& r = it->second;
        if (r.min != d.min[i] || r.opt != d.opt[i] || r.max != d.max[i]) {
          throw Error(where + " (symbol '" + sym + "') range [" + std::to_string(d.min[i]) + ", " +
                      std::to_string(d.opt[i]) + ", " + std::to_string(d.max[i]) +
                      "] disagrees with the range already set [" + std::to_string(r.min) + ", " +
                      std::to_string(r.opt) + ", " + std::to_string(r.max) + "]");
        }
        continue;
      }
      try {
        set_range(sym, d.min[i], d.opt[i], d.max[i]);
      } catch (const Error& err) {
        throw Error(where + ": " + err.what());
      }
    }
  }
  input_dims_.clear();
  for (const Tensor* in : network.inputs()) {
    for (size_t i = 0; i < in->shape().size(); ++i) {
      const DimExpr& e = in->shape()[i];
      if (e.is_symbol() && ranges_.count(e.symbol_name()) == 0) {
        throw Error("profile: input '" + in->name() + "' dim " + std::to_string(i) +
                    " is symbol '" + e.symbol_name() +
                    "', which has no range (use set_range or set_dimensions)");
      }
    }
  }
}

SymbolRanges OptimizationProfile::intervals() const {
  SymbolRanges r;
  for (const auto& [name, range] : ranges_) r[name] = Interval{range.min, range.max};
  return r;
}

SymbolBindings OptimizationProfile::at_min() const {
  SymbolBindings b;
  for (const auto& [name, range] : ranges_) b[name] = range.min;
  return b;
}
SymbolBindings OptimizationProfile::at_opt() const {
  SymbolBindings b;
  for (const auto& [name, range] : ranges_) b[name] = range.opt;
  return b;
}
SymbolBindings OptimizationProfile::at_max() const {
  SymbolBindings b;
  for (const auto& [name, range] : ranges_) b[name] = range.max;
  return b;
}

}  // namespace ember::engine
