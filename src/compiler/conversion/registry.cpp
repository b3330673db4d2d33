// The converter registry: schema key -> converters, asked by the partitioner and the converter.
#include <algorithm>

#include "ember/compiler/conversion.h"

namespace ember::compiler {

namespace {

bool shapes_static(const Node& node) {
  for (const Value* v : node.input_values()) {
    if (!engine::shape_is_static(v->shape())) return false;
  }
  for (const Value* v : node.outputs()) {
    if (!engine::shape_is_static(v->shape())) return false;
  }
  return true;
}

}  // namespace

ConverterRegistry& ConverterRegistry::instance() {
  static ConverterRegistry registry;
  return registry;
}

void ConverterRegistry::add(ConverterEntry entry) {
  if (entry.op.empty() || !entry.convert) {
    throw Error("converter registry: an entry needs an op and a convert function");
  }
  auto& list = entries_[entry.op];
  list.push_back(std::move(entry));
  // Highest priority first; registration order breaks ties.
  std::stable_sort(list.begin(), list.end(),
                   [](const ConverterEntry& a, const ConverterEntry& b) {
                     return a.priority > b.priority;
                   });
}

const ConverterEntry* ConverterRegistry::find(const Node& node, const CompileSettings& settings,
                                              std::string* why) const {
  auto it = entries_.find(node.op());
  if (it == entries_.end()) {
    if (why != nullptr) *why = "no converter for " + node.op();
    return nullptr;
  }
  std::string reasons;
  for (const ConverterEntry& e : it->second) {
    Reason r;
    if (!e.supports_dynamic && !shapes_static(node)) {
      r = "the converter takes static shapes only";
    } else if (e.validate) {
      try {
        r = e.validate(node, settings);
      } catch (const std::exception& ex) {
        r = ex.what();
      }
    }
    if (!r) return &e;
    if (!reasons.empty()) reasons += "; ";
    reasons += *r;
  }
  if (why != nullptr) *why = reasons;
  return nullptr;
}

bool ConverterRegistry::has(const std::string& op) const { return entries_.count(op) != 0; }

std::vector<std::string> ConverterRegistry::ops() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& [op, list] : entries_) out.push_back(op);
  return out;
}

std::vector<const ConverterEntry*> ConverterRegistry::entries(const std::string& op) const {
  std::vector<const ConverterEntry*> out;
  auto it = entries_.find(op);
  if (it != entries_.end()) {
    for (const auto& e : it->second) out.push_back(&e);
  }
  return out;
}

size_t ConverterRegistry::remove(const std::string& op, const std::string& file) {
  auto it = entries_.find(op);
  if (it == entries_.end()) return 0;
  auto& list = it->second;
  const size_t before = list.size();
  list.erase(std::remove_if(list.begin(), list.end(),
                            [&](const ConverterEntry& e) { return e.file == file; }),
             list.end());
  const size_t removed = before - list.size();
  if (list.empty()) entries_.erase(it);
  return removed;
}

ConverterRegistration::ConverterRegistration(std::vector<std::string> ops, ConvertFn convert,
                                             ValidateFn validate, bool supports_dynamic,
                                             int priority, const char* file) {
  std::string f = file;
  const auto pos = f.find("src/compiler/");
  if (pos != std::string::npos) f = f.substr(pos);
  for (auto& op : ops) {
    ConverterRegistry::instance().add(
        ConverterEntry{std::move(op), convert, validate, priority, supports_dynamic, f});
  }
}

}  // namespace ember::compiler
