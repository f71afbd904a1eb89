#include "params.h"

#include <algorithm>

#include "status.h"

namespace recgen {

JsonParameter::JsonParameter(const ModelConfig& config, const std::string& name) : name_(name) {
  const std::string& json = config.parameter(name);
  document_.Parse(json.c_str(), json.size());
  if (document_.HasParseError() || !document_.IsObject()) fail("not a JSON object");
}

void JsonParameter::fail(const std::string& why) const {
  throw Error(TRITONSERVER_ERROR_INVALID_ARG, "parameter '" + name_ + "': " + why);
}

void JsonParameter::expect_keys(const rapidjson::Value& object, std::initializer_list<const char*> keys,
                                const std::string& where) const {
  if (!object.IsObject()) fail(where + " is not an object");
  for (const char* key : keys) {
    if (!object.HasMember(key)) fail(where + " lacks '" + key + "'");
  }
  for (const auto& entry : object.GetObject()) {
    const std::string key = entry.name.GetString();
    if (std::none_of(keys.begin(), keys.end(), [&](const char* known) { return key == known; })) {
      fail(where + " has an unknown key '" + key + "'");
    }
  }
}

const rapidjson::Value& JsonParameter::member(const rapidjson::Value& object, const char* key) const {
  if (!object.IsObject() || !object.HasMember(key)) fail(std::string("missing '") + key + "'");
  return object[key];
}

std::string JsonParameter::text(const rapidjson::Value& object, const char* key) const {
  const rapidjson::Value& value = member(object, key);
  if (!value.IsString()) fail(std::string("'") + key + "' is not a string");
  return value.GetString();
}

int64_t JsonParameter::integer(const rapidjson::Value& object, const char* key) const {
  const rapidjson::Value& value = member(object, key);
  if (!value.IsInt64()) fail(std::string("'") + key + "' is not an integer");
  return value.GetInt64();
}

size_t JsonParameter::count(const rapidjson::Value& object, const char* key) const {
  const int64_t value = integer(object, key);
  if (value < 0) fail(std::string("'") + key + "' is negative");
  return static_cast<size_t>(value);
}

bool JsonParameter::boolean(const rapidjson::Value& object, const char* key) const {
  const rapidjson::Value& value = member(object, key);
  if (!value.IsBool()) fail(std::string("'") + key + "' is not true or false");
  return value.GetBool();
}

const rapidjson::Value& JsonParameter::list(const rapidjson::Value& object, const char* key) const {
  const rapidjson::Value& value = member(object, key);
  if (!value.IsArray()) fail(std::string("'") + key + "' is not a list");
  return value;
}

std::vector<std::string> JsonParameter::texts(const rapidjson::Value& object, const char* key) const {
  std::vector<std::string> values;
  for (const auto& value : list(object, key).GetArray()) {
    if (!value.IsString()) fail(std::string("'") + key + "' holds a value that is not a string");
    values.emplace_back(value.GetString());
  }
  return values;
}

std::vector<int64_t> JsonParameter::integers(const rapidjson::Value& object, const char* key) const {
  std::vector<int64_t> values;
  for (const auto& value : list(object, key).GetArray()) {
    if (!value.IsInt64()) fail(std::string("'") + key + "' holds a value that is not an integer");
    values.push_back(value.GetInt64());
  }
  return values;
}

const TensorSpec& tensor_spec(const JsonParameter& parameter, const std::vector<TensorSpec>& specs,
                              const std::string& name, const char* kind) {
  const auto found = std::find_if(specs.begin(), specs.end(), [&](const TensorSpec& t) { return t.name == name; });
  if (found == specs.end()) parameter.fail(std::string("names ") + kind + " '" + name + "', which the config lacks");
  return *found;
}

}  // namespace recgen
