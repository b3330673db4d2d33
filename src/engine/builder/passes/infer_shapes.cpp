#include <algorithm>

#include "builder/passes/passes.h"
#include "runtime/shapes.h"

namespace ember::engine {
namespace {

// Decides a check over a whole profile: true = always holds, false = may fail somewhere
// (kept for run time). Throws when it fails at a point of the profile.
bool prove(const Layer& l, const ShapeCheck& c, const OptimizationProfile& p, size_t pi) {
  for (const SymbolBindings& b : {p.at_min(), p.at_opt(), p.at_max()}) {
    try {
      check_shape_check(l, c, b);
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + " at a corner (min/opt/max) of optimization profile " +
                  std::to_string(pi));
    }
  }
  const SymbolRanges r = p.intervals();
  switch (c.kind) {
    case ShapeCheck::Kind::kEqual: {
      const Interval d = (c.a - c.b).bounds(r);
      return d.lo == 0 && d.hi == 0;
    }
    case ShapeCheck::Kind::kLessEqual:
      return (c.b - c.a).bounds(r).lo >= 0;
    case ShapeCheck::Kind::kBroadcastable: {
      const Interval d = (c.a - c.b).bounds(r);
      const Interval ia = c.a.bounds(r), ib = c.b.bounds(r);
      return (d.lo == 0 && d.hi == 0) || (ia.lo == 1 && ia.hi == 1) || (ib.lo == 1 && ib.hi == 1);
    }
  }
  return false;
}

}  // namespace

void pass_infer_shapes(BuildState& s) {
  Network& net = s.plan.network;
  net.reinfer();
  size_t proven = 0, runtime = 0;
  for (const Layer* l : net.layers()) {
    for (const ShapeCheck& c : l->shape_checks()) {
      bool all = true;
      for (size_t pi = 0; pi < s.config.profiles.size(); ++pi) {
        all = prove(*l, c, s.config.profiles[pi], pi) && all;
      }
      all ? ++proven : ++runtime;
    }
    for (const Tensor* t : l->outputs()) {
      for (size_t pi = 0; pi < s.config.profiles.size(); ++pi) {
        const OptimizationProfile& p = s.config.profiles[pi];
        for (size_t d = 0; d < t->shape().size(); ++d) {
          const Interval iv = t->shape()[d].bounds(p.intervals());
          if (iv.hi < 0) {
            throw Error(l->describe() + ": output '" + t->name() + "' dim " + std::to_string(d) +
                        " = " + t->shape()[d].to_string() +
                        " is negative over all of optimization profile " + std::to_string(pi));
          }
        }
        for (const SymbolBindings& b : {p.at_min(), p.at_opt(), p.at_max()}) {
          for (size_t d = 0; d < t->shape().size(); ++d) {
            if (t->shape()[d].evaluate(b) < 0) {
              throw Error(l->describe() + ": output '" + t->name() + "' dim " + std::to_string(d) +
                          " = " + t->shape()[d].to_string() +
                          " is negative at a corner of optimization profile " + std::to_string(pi));
            }
          }
        }
      }
    }
  }
  s.log.push_back("infer_shapes: " + std::to_string(proven) + " shape checks proven, " +
                  std::to_string(runtime) + " left for run time");
}

int64_t max_tensor_bytes(const Tensor& t, const std::vector<OptimizationProfile>& profiles) {
  int64_t best = 0;
  const DimExpr n = shape_numel(t.shape());
  for (const OptimizationProfile& p : profiles) {
    const Interval iv = n.bounds(p.intervals());
    best = std::max(best, iv.hi);
  }
  if (best > (int64_t{1} << 46) / static_cast<int64_t>(dtype_size(t.dtype()))) {
    throw Error("tensor '" + t.name() + "' " + shape_to_string(t.shape()) +
                " is too large over the profile");
  }
  return best * static_cast<int64_t>(dtype_size(t.dtype()));
}

}  // namespace ember::engine
