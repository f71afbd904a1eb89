// What the backend reads of a model's config: its tensors, batching and string parameters.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "triton_api.h"

namespace recgen {

struct TensorSpec {
  std::string name;
  TRITONSERVER_DataType datatype = TRITONSERVER_TYPE_INVALID;
  std::vector<int64_t> dims;  // without the batch dimension; -1 where any size is allowed
};

struct ModelConfig {
  std::string name;
  int64_t max_batch_size = 0;  // 0: requests carry no batch dimension
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::map<std::string, std::string> parameters;  // parameters { key, value { string_value } }

  // The parameter `key`, or an Error naming the model and the key.
  const std::string& parameter(const std::string& key) const;
};

// Parses the JSON of a model config (TRITONBACKEND_ModelConfig, version 1); an Error names what is malformed.
ModelConfig parse_model_config(const char* json, size_t byte_size);

// TYPE_FP32 and the like (the config's spelling) as the API's data type; INVALID when unknown.
TRITONSERVER_DataType datatype_from_config(const std::string& name);
// Bytes of one element of `datatype` (0 for BYTES and INVALID, which have none).
size_t element_bytes(TRITONSERVER_DataType datatype);

}  // namespace recgen
