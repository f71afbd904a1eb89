// The typed parameters a model's config carries (recgen_params on the Python side), read as strictly as
// recgen_spec reads them: a missing or unknown key, or a value of the wrong type, refuses the model with an
// error naming the parameter and the key, so the build and the backend cannot drift apart.
#pragma once

#include <rapidjson/document.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "config.h"

namespace recgen {

class JsonParameter {
 public:
  // Parses the string parameter `name` of `config` as a JSON object.
  JsonParameter(const ModelConfig& config, const std::string& name);

  const rapidjson::Value& root() const { return document_; }
  // Throws INVALID_ARG: "parameter '<name>': <why>".
  [[noreturn]] void fail(const std::string& why) const;
  // Fails unless `object` has exactly `keys`; `where` names the spec in the message.
  void expect_keys(const rapidjson::Value& object, std::initializer_list<const char*> keys,
                   const std::string& where) const;
  const rapidjson::Value& member(const rapidjson::Value& object, const char* key) const;
  std::string text(const rapidjson::Value& object, const char* key) const;
  int64_t integer(const rapidjson::Value& object, const char* key) const;
  // A non-negative integer, as a size.
  size_t count(const rapidjson::Value& object, const char* key) const;
  bool boolean(const rapidjson::Value& object, const char* key) const;
  const rapidjson::Value& list(const rapidjson::Value& object, const char* key) const;
  std::vector<std::string> texts(const rapidjson::Value& object, const char* key) const;
  std::vector<int64_t> integers(const rapidjson::Value& object, const char* key) const;

 private:
  std::string name_;
  rapidjson::Document document_;
};

// The tensor `name` of `specs`, or an INVALID_ARG error saying the parameter names a `kind` the config lacks.
const TensorSpec& tensor_spec(const JsonParameter& parameter, const std::vector<TensorSpec>& specs,
                              const std::string& name, const char* kind);

}  // namespace recgen
