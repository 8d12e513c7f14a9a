// valijson reports a bad schema through this switch: exceptions instead of abort().
#define VALIJSON_USE_EXCEPTIONS 1

#include "workers/job_type.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <locale>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include <valijson/adapters/nlohmann_json_adapter.hpp>
#include <valijson/schema.hpp>
#include <valijson/schema_parser.hpp>
#include <valijson/validation_results.hpp>
#include <valijson/validator.hpp>

namespace switchyard::workers {

std::string_view to_string(Kind kind) noexcept {
  switch (kind) {
    case Kind::io: return "io";
    case Kind::cpu: return "cpu";
  }
  return "cpu";
}

std::string_view to_string(StopReason reason) noexcept {
  switch (reason) {
    case StopReason::none: return "none";
    case StopReason::timeout: return "timeout";
    case StopReason::cancel: return "cancel";
    case StopReason::shutdown: return "shutdown";
  }
  return "none";
}

struct Catalogue::Compiled {
  valijson::Schema schema;
};

namespace {

using Json = nlohmann::json;

/// Where a valijson error points: the JSON Pointer and the schema node that governs it.
struct Location {
  std::string pointer;
  const Json* schema = nullptr;  // nullptr when the schema walk lost track
  const Json* value = nullptr;   // the instance value at `pointer`, nullptr if absent
};

std::string escape_pointer_token(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  for (char c : token) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

const Json* member_schema(const Json* schema, const std::string& name) {
  if (schema == nullptr || !schema->is_object()) return nullptr;
  if (auto props = schema->find("properties"); props != schema->end() && props->is_object()) {
    if (auto it = props->find(name); it != props->end()) return &*it;
  }
  if (auto extra = schema->find("additionalProperties"); extra != schema->end() && extra->is_object()) {
    return &*extra;
  }
  return nullptr;
}

const Json* items_schema(const Json* schema) {
  if (schema == nullptr || !schema->is_object()) return nullptr;
  auto items = schema->find("items");
  return items != schema->end() && items->is_object() ? &*items : nullptr;
}

// valijson's context is "<root>" followed by "[name]" or "[index]" segments; the two are told
// apart by walking the instance, since a member may well be called "3".
Location locate(const std::vector<std::string>& context, const Json& schema, const Json& input) {
  Location loc{"", &schema, &input};
  for (std::size_t i = 1; i < context.size(); ++i) {
    const std::string& segment = context[i];
    std::string token = segment.size() >= 2 && segment.front() == '[' && segment.back() == ']'
                            ? segment.substr(1, segment.size() - 2)
                            : segment;
    loc.pointer += '/';
    loc.pointer += escape_pointer_token(token);
    if (loc.value != nullptr && loc.value->is_array()) {
      loc.schema = items_schema(loc.schema);
      std::size_t index = 0;
      const bool numeric = !token.empty() && std::all_of(token.begin(), token.end(), [](char c) {
        return c >= '0' && c <= '9';
      });
      if (numeric) index = std::stoul(token);
      loc.value = numeric && index < loc.value->size() ? &(*loc.value)[index] : nullptr;
    } else {
      loc.schema = member_schema(loc.schema, token);
      const Json* parent = loc.value;
      loc.value = nullptr;
      if (parent != nullptr && parent->is_object()) {
        if (auto it = parent->find(token); it != parent->end()) loc.value = &*it;
      }
    }
  }
  return loc;
}

std::string format_number(const Json& number) {
  if (number.is_number_float()) {
    const double d = number.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
      return std::to_string(static_cast<long long>(d));
    }
  }
  return number.dump();
}

std::string type_phrase(const Json& type) {
  auto one = [](const std::string& t) -> std::string {
    if (t == "integer" || t == "object" || t == "array") return "an " + t;
    if (t == "null") return "null";
    return "a " + t;
  };
  if (type.is_string()) return one(type.get<std::string>());
  std::string out;
  if (type.is_array()) {
    for (const auto& t : type) {
      if (!t.is_string()) continue;
      if (!out.empty()) out += " or ";
      out += one(t.get<std::string>());
    }
  }
  return out.empty() ? "of an allowed type" : out;
}

// The name quoted at the end of valijson messages such as "Missing required property 'x'.".
std::string quoted_name(const std::string& description, std::string_view lead) {
  const auto start = description.find(lead);
  if (start == std::string::npos) return {};
  const auto from = start + lead.size();
  const auto to = description.rfind('\'');
  return to != std::string::npos && to >= from ? description.substr(from, to - from) : std::string{};
}

bool starts_with(const std::string& s, std::string_view prefix) { return s.rfind(prefix, 0) == 0; }

/// Parent-level errors that only summarise a failure reported in more detail at a child.
bool is_summary(const std::string& description) {
  return starts_with(description, "Failed to validate against schema associated with property name") ||
         starts_with(description, "Failed to validate against additional properties schema") ||
         starts_with(description, "Failed to validate against schema associated with pattern") ||
         starts_with(description, "Failed to validate item #");
}

std::string schema_value(const Json* schema, const char* key, const std::string& fallback) {
  if (schema == nullptr || !schema->is_object()) return fallback;
  auto it = schema->find(key);
  if (it == schema->end()) return fallback;
  return it->is_number() ? format_number(*it) : it->dump();
}

/// A translated error; a type error outranks any other error at the same path.
struct Pending {
  FieldError error;
  bool type_error = false;
};

/// One valijson error rewritten as FieldErrors (an "unknown field" error may name several).
void translate(const valijson::ValidationResults::Error& error, const Json& schema, const Json& input,
               std::vector<Pending>& out) {
  const Location loc = locate(error.context, schema, input);
  const std::string& d = error.description;

  if (starts_with(d, "Missing required property")) {
    out.push_back({{loc.pointer + "/" + escape_pointer_token(quoted_name(d, "property '")), "is required"}});
    return;
  }
  if (starts_with(d, "Object contains a property that could not be validated")) {
    // valijson names only the first unknown member; report them all.
    const Json* props = nullptr;
    if (loc.schema != nullptr && loc.schema->is_object()) {
      if (auto it = loc.schema->find("properties"); it != loc.schema->end()) props = &*it;
    }
    if (loc.value != nullptr && loc.value->is_object() && props != nullptr && props->is_object()) {
      for (const auto& [name, value] : loc.value->items()) {
        if (!props->contains(name)) out.push_back({{loc.pointer + "/" + escape_pointer_token(name), "unknown field"}});
      }
      return;
    }
    out.push_back({{loc.pointer + "/" + escape_pointer_token(quoted_name(d, "constraints: '")), "unknown field"}});
    return;
  }

  // The nlohmann adapter reads integers above INT64_MAX as negative, so valijson may call
  // 18446744073709551615 too small; it is too large.
  if (loc.value != nullptr && loc.value->is_number_unsigned() &&
      loc.value->get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) &&
      starts_with(d, "Expected number")) {
    out.push_back({{loc.pointer, "must be <= " + schema_value(loc.schema, "maximum", "9223372036854775807")}});
    return;
  }

  std::string message = d;
  const bool type_error = starts_with(d, "Value type not permitted by 'type' constraint");
  if (type_error) {
    if (loc.schema != nullptr && loc.schema->is_object() && loc.schema->contains("type")) {
      message = "must be " + type_phrase(loc.schema->at("type"));
    }
  } else if (starts_with(d, "Failed to match against any enum values")) {
    if (loc.schema != nullptr && loc.schema->is_object() && loc.schema->contains("enum")) {
      message = "must be one of";
      const char* sep = " ";
      for (const auto& v : loc.schema->at("enum")) {
        message += sep + v.dump();
        sep = ", ";
      }
    }
  } else if (starts_with(d, "Expected number greater than or equal to")) {
    message = "must be >= " + schema_value(loc.schema, "minimum", d.substr(d.rfind(' ') + 1));
  } else if (starts_with(d, "Expected number greater than")) {
    message = "must be > " + schema_value(loc.schema, "exclusiveMinimum", d.substr(d.rfind(' ') + 1));
  } else if (starts_with(d, "Expected number less than or equal to")) {
    message = "must be <= " + schema_value(loc.schema, "maximum", d.substr(d.rfind(' ') + 1));
  } else if (starts_with(d, "Expected number less than")) {
    message = "must be < " + schema_value(loc.schema, "exclusiveMaximum", d.substr(d.rfind(' ') + 1));
  } else if (starts_with(d, "String should be no more than")) {
    message = "must be at most " + schema_value(loc.schema, "maxLength", "?") + " characters long";
  } else if (starts_with(d, "String should be no fewer than")) {
    message = "must be at least " + schema_value(loc.schema, "minLength", "?") + " characters long";
  } else if (starts_with(d, "Object should have no more than")) {
    message = "must have at most " + schema_value(loc.schema, "maxProperties", "?") + " members";
  } else if (starts_with(d, "Array should contain no more than")) {
    message = "must have at most " + schema_value(loc.schema, "maxItems", "?") + " items";
  } else if (starts_with(d, "Failed to match regex")) {
    message = "must match the pattern " + schema_value(loc.schema, "pattern", "?");
  }
  out.push_back({{loc.pointer, std::move(message)}, type_error});
}

/// One error per path (a type error wins), and no summaries where a child explains the failure.
std::vector<FieldError> tidy(const valijson::ValidationResults& results, const Json& schema, const Json& input) {
  std::vector<Pending> pending;
  std::vector<FieldError> summaries;
  for (const auto& error : results) {
    if (is_summary(error.description)) {
      summaries.push_back({locate(error.context, schema, input).pointer, "is invalid"});
      continue;
    }
    std::vector<Pending> translated;
    translate(error, schema, input, translated);
    for (auto& p : translated) {
      auto same = std::find_if(pending.begin(), pending.end(),
                               [&](const Pending& e) { return e.error.path == p.error.path; });
      if (same == pending.end()) {
        pending.push_back(std::move(p));
      } else if (p.type_error && !same->type_error) {
        *same = std::move(p);
      }
    }
  }
  std::vector<FieldError> errors;
  errors.reserve(pending.size());
  for (auto& p : pending) errors.push_back(std::move(p.error));
  for (auto& summary : summaries) {
    const bool explained = std::any_of(errors.begin(), errors.end(), [&](const FieldError& e) {
      return starts_with(e.path, summary.path + "/");
    });
    const bool duplicate = std::any_of(errors.begin(), errors.end(), [&](const FieldError& e) {
      return e.path == summary.path;
    });
    if (!explained && !duplicate) errors.push_back(std::move(summary));
  }
  return errors;
}

}  // namespace

Catalogue::Catalogue() = default;
Catalogue::~Catalogue() = default;
Catalogue::Catalogue(Catalogue&&) noexcept = default;
Catalogue& Catalogue::operator=(Catalogue&&) noexcept = default;

void Catalogue::add(JobType type) {
  if (type.name.empty()) throw std::invalid_argument("job type without a name");
  if (find(type.name) != nullptr) throw std::invalid_argument("duplicate job type '" + type.name + "'");
  if (static_cast<bool>(type.blocking) == static_cast<bool>(type.async)) {
    throw std::invalid_argument("job type '" + type.name + "' needs exactly one of a blocking or an async run");
  }
  if (!type.input_schema.is_object()) {
    throw std::invalid_argument("job type '" + type.name + "' has an input schema that is not an object");
  }
  auto compiled = std::make_unique<Compiled>();
  try {
    valijson::SchemaParser parser(valijson::SchemaParser::kDraft7);
    parser.populateSchema(valijson::adapters::NlohmannJsonAdapter(type.input_schema), compiled->schema);
  } catch (const std::exception& e) {
    throw std::invalid_argument("job type '" + type.name + "' has a bad input schema: " + e.what());
  }
  // std::regex (valijson's "pattern") goes through ctype<char>::narrow, which fills a cache on
  // first use (GCC PR 77704). Fill it now, while the catalogue is built on one thread.
  const auto& ctype = std::use_facet<std::ctype<char>>(std::locale());
  for (int c = 0; c < 256; ++c) static_cast<void>(ctype.narrow(static_cast<char>(c), '\0'));

  types_.reserve(types_.size() + 1);
  compiled_.reserve(compiled_.size() + 1);
  types_.push_back(std::move(type));
  compiled_.push_back(std::move(compiled));
}

const JobType* Catalogue::find(std::string_view name) const noexcept {
  auto it = std::find_if(types_.begin(), types_.end(), [&](const JobType& t) { return t.name == name; });
  return it == types_.end() ? nullptr : &*it;
}

const std::vector<JobType>& Catalogue::types() const noexcept { return types_; }

std::vector<FieldError> Catalogue::validate(const JobType& type, const nlohmann::json& input) const {
  std::size_t index = 0;
  while (index < types_.size() && &types_[index] != &type) ++index;
  if (index == types_.size()) {
    // A copy of one of our types: fall back to its name.
    const JobType* same = find(type.name);
    if (same == nullptr) throw std::invalid_argument("job type '" + type.name + "' is not in this catalogue");
    index = static_cast<std::size_t>(same - types_.data());
  }
  const JobType& own = types_[index];
  // A Validator caches compiled regexes, so each call gets its own; the Schema is only read.
  valijson::Validator validator(valijson::Validator::kStrongTypes);
  valijson::ValidationResults results;
  if (!validator.validate(compiled_[index]->schema, valijson::adapters::NlohmannJsonAdapter(input), &results)) {
    auto errors = tidy(results, own.input_schema, input);
    if (errors.empty()) errors.push_back({"", "is invalid"});
    return errors;
  }
  return own.extra_check ? own.extra_check(input) : std::vector<FieldError>{};
}

Catalogue make_builtin_catalogue(const BuiltinOptions& options) {
  Catalogue catalogue;
  register_builtin_types(catalogue, options);
  return catalogue;
}

}  // namespace switchyard::workers
