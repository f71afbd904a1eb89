#include "config.h"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include <cstdlib>

#include "status.h"

namespace recgen {
namespace {

[[noreturn]] void malformed(const std::string& what) {
  throw Error(TRITONSERVER_ERROR_INVALID_ARG, "model config: " + what);
}

// Protobuf's JSON writes 64-bit integers as strings and smaller ones as numbers; accept both.
int64_t integer(const rapidjson::Value& value, const std::string& where) {
  if (value.IsInt64()) return value.GetInt64();
  if (value.IsString()) {
    char* end = nullptr;
    const long long parsed = std::strtoll(value.GetString(), &end, 10);
    if (end != value.GetString() && *end == '\0') return parsed;
  }
  malformed(where + " is not an integer");
}

std::vector<TensorSpec> tensors(const rapidjson::Value& config, const char* key) {
  std::vector<TensorSpec> specs;
  if (!config.HasMember(key)) return specs;
  const rapidjson::Value& list = config[key];
  if (!list.IsArray()) malformed(std::string(key) + " is not a list");
  for (const auto& entry : list.GetArray()) {
    if (!entry.IsObject() || !entry.HasMember("name") || !entry["name"].IsString()) {
      malformed(std::string(key) + " has an entry without a name");
    }
    TensorSpec spec;
    spec.name = entry["name"].GetString();
    const std::string where = std::string(key) + " '" + spec.name + "'";
    if (!entry.HasMember("data_type") || !entry["data_type"].IsString()) malformed(where + " has no data_type");
    spec.datatype = datatype_from_config(entry["data_type"].GetString());
    if (spec.datatype == TRITONSERVER_TYPE_INVALID) {
      malformed(where + " has data_type " + entry["data_type"].GetString() + ", which this backend does not serve");
    }
    if (entry.HasMember("dims")) {
      if (!entry["dims"].IsArray()) malformed(where + " dims is not a list");
      for (const auto& dim : entry["dims"].GetArray()) spec.dims.push_back(integer(dim, where + " dims"));
    }
    specs.push_back(std::move(spec));
  }
  return specs;
}

}  // namespace

const std::string& ModelConfig::parameter(const std::string& key) const {
  const auto found = parameters.find(key);
  if (found == parameters.end()) {
    throw Error(TRITONSERVER_ERROR_INVALID_ARG, "model '" + name + "' has no parameter '" + key + "'");
  }
  return found->second;
}

ModelConfig parse_model_config(const char* json, size_t byte_size) {
  rapidjson::Document document;
  document.Parse(json, byte_size);
  if (document.HasParseError()) {
    malformed(std::string("invalid JSON at offset ") + std::to_string(document.GetErrorOffset()) + ": " +
              rapidjson::GetParseError_En(document.GetParseError()));
  }
  if (!document.IsObject()) malformed("not a JSON object");
  ModelConfig config;
  if (document.HasMember("name") && document["name"].IsString()) config.name = document["name"].GetString();
  if (document.HasMember("max_batch_size")) config.max_batch_size = integer(document["max_batch_size"], "max_batch_size");
  config.inputs = tensors(document, "input");
  config.outputs = tensors(document, "output");
  if (document.HasMember("parameters") && document["parameters"].IsObject()) {
    for (const auto& member : document["parameters"].GetObject()) {
      const rapidjson::Value& value = member.value;
      if (value.IsObject() && value.HasMember("string_value") && value["string_value"].IsString()) {
        config.parameters[member.name.GetString()] = value["string_value"].GetString();
      }
    }
  }
  return config;
}

TRITONSERVER_DataType datatype_from_config(const std::string& name) {
  static const std::map<std::string, TRITONSERVER_DataType> by_name = {
      {"TYPE_BOOL", TRITONSERVER_TYPE_BOOL},     {"TYPE_UINT8", TRITONSERVER_TYPE_UINT8},
      {"TYPE_UINT16", TRITONSERVER_TYPE_UINT16}, {"TYPE_UINT32", TRITONSERVER_TYPE_UINT32},
      {"TYPE_UINT64", TRITONSERVER_TYPE_UINT64}, {"TYPE_INT8", TRITONSERVER_TYPE_INT8},
      {"TYPE_INT16", TRITONSERVER_TYPE_INT16},   {"TYPE_INT32", TRITONSERVER_TYPE_INT32},
      {"TYPE_INT64", TRITONSERVER_TYPE_INT64},   {"TYPE_FP16", TRITONSERVER_TYPE_FP16},
      {"TYPE_FP32", TRITONSERVER_TYPE_FP32},     {"TYPE_FP64", TRITONSERVER_TYPE_FP64},
  };
  const auto found = by_name.find(name);
  return found == by_name.end() ? TRITONSERVER_TYPE_INVALID : found->second;
}

size_t element_bytes(TRITONSERVER_DataType datatype) {
  switch (datatype) {
    case TRITONSERVER_TYPE_BOOL:
    case TRITONSERVER_TYPE_UINT8:
    case TRITONSERVER_TYPE_INT8:
      return 1;
    case TRITONSERVER_TYPE_UINT16:
    case TRITONSERVER_TYPE_INT16:
    case TRITONSERVER_TYPE_FP16:
    case TRITONSERVER_TYPE_BF16:
      return 2;
    case TRITONSERVER_TYPE_UINT32:
    case TRITONSERVER_TYPE_INT32:
    case TRITONSERVER_TYPE_FP32:
      return 4;
    case TRITONSERVER_TYPE_UINT64:
    case TRITONSERVER_TYPE_INT64:
    case TRITONSERVER_TYPE_FP64:
      return 8;
    default:
      return 0;
  }
}

}  // namespace recgen
