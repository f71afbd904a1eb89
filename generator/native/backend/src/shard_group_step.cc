// The shard-group step (`recgen_native_step: shard_group`) of the separate and distributed layouts: the native twin
// of shard_model.py, reading the same typed parameter `shards` (recgen_params.ShardGroupParams).
#include <rapidjson/document.h>

#include <algorithm>
#include <initializer_list>
#include <string>

#include "rows.h"
#include "status.h"
#include "step.h"

namespace recgen {
namespace {

[[noreturn]] void bad_parameter(const std::string& why) {
  throw Error(TRITONSERVER_ERROR_INVALID_ARG, "parameter 'shards': " + why);
}

const rapidjson::Value& member(const rapidjson::Value& object, const char* key) {
  if (!object.IsObject() || !object.HasMember(key)) bad_parameter(std::string("missing '") + key + "'");
  return object[key];
}

std::string text(const rapidjson::Value& object, const char* key) {
  const rapidjson::Value& value = member(object, key);
  if (!value.IsString()) bad_parameter(std::string("'") + key + "' is not a string");
  return value.GetString();
}

// Error unless `object` has exactly `keys`, as recgen_params reads it: the two sides cannot drift apart.
void expect_keys(const rapidjson::Value& object, std::initializer_list<const char*> keys, const std::string& where) {
  if (!object.IsObject()) bad_parameter(where + " is not an object");
  for (const char* key : keys) {
    if (!object.HasMember(key)) bad_parameter(where + " lacks '" + key + "'");
  }
  for (const auto& entry : object.GetObject()) {
    const std::string name = entry.name.GetString();
    if (std::none_of(keys.begin(), keys.end(), [&](const char* key) { return name == key; })) {
      bad_parameter(where + " has an unknown key '" + name + "'");
    }
  }
}

const TensorSpec& tensor(const std::vector<TensorSpec>& specs, const std::string& name, const char* kind) {
  const auto found = std::find_if(specs.begin(), specs.end(), [&](const TensorSpec& t) { return t.name == name; });
  if (found == specs.end()) bad_parameter(std::string("names ") + kind + " '" + name + "', which the config lacks");
  return *found;
}

class ShardGroupStep : public Step {
 public:
  ShardGroupStep(const ModelConfig& config, const std::string& version_dir) {
    rapidjson::Document document;
    const std::string& json = config.parameter("shards");
    document.Parse(json.c_str(), json.size());
    if (document.HasParseError() || !document.IsObject()) bad_parameter("not a JSON object");
    expect_keys(document, {"input", "output", "shards", "slots", "weights_input", "row_dtype"}, "ShardGroupParams");
    if (!document["shards"].IsArray() || !document["slots"].IsArray()) bad_parameter("shards and slots must be lists");
    input_ = text(document, "input");
    output_ = text(document, "output");
    weights_ = text(document, "weights_input");
    const TensorSpec& ids = tensor(config.inputs, input_, "input");
    if (ids.datatype != TRITONSERVER_TYPE_INT32 || ids.dims.size() != 1 || ids.dims[0] < 0) {
      bad_parameter("input '" + input_ + "' must be INT32 [width]");
    }
    input_width_ = static_cast<size_t>(ids.dims[0]);
    if (!weights_.empty()) {
      const TensorSpec& weights = tensor(config.inputs, weights_, "weights input");
      if (weights.datatype != TRITONSERVER_TYPE_FP32 || weights.dims != ids.dims) {
        bad_parameter("weights input '" + weights_ + "' must be FP32 shaped like '" + input_ + "'");
      }
    }
    std::vector<GroupMemberFiles> members;
    for (const auto& shard : member(document, "shards").GetArray()) {
      expect_keys(shard, {"table", "shard", "rows_file", "scales_file"}, "GroupMember");
      members.push_back({text(shard, "table"), text(shard, "rows_file"), text(shard, "scales_file")});
    }
    std::vector<GroupSlotColumns> slots;
    for (const auto& slot : member(document, "slots").GetArray()) {
      expect_keys(slot, {"table", "columns"}, "GroupSlot");
      const rapidjson::Value& columns = member(slot, "columns");
      if (!columns.IsArray() || columns.Size() != 2 || !columns[0].IsUint64() || !columns[1].IsUint64()) {
        bad_parameter("a slot's columns are not [first, last]");
      }
      slots.push_back({text(slot, "table"), columns[0].GetUint64(), columns[1].GetUint64()});
    }
    rows_ = std::make_unique<GroupRows>(version_dir, members, slots, row_dtype_from_name(text(document, "row_dtype")),
                                        input_width_);
    rows_->touch();
    output_spec_ = tensor(config.outputs, output_, "output");
    if (output_spec_.datatype != TRITONSERVER_TYPE_FP32 || output_spec_.dims.size() != 1 ||
        output_spec_.dims[0] != static_cast<int64_t>(rows_->output_width())) {
      bad_parameter("output '" + output_ + "' must be FP32 [" + std::to_string(rows_->output_width()) + "]");
    }
  }

  void execute(const RequestInputs& inputs, const std::vector<std::string>& outputs,
               TRITONBACKEND_Response* response) const override {
    const InputTensor& ids = inputs.get(input_);
    if (ids.datatype != TRITONSERVER_TYPE_INT32 || ids.shape.size() != 2 ||
        ids.shape[1] != static_cast<int64_t>(input_width_)) {
      throw Error(TRITONSERVER_ERROR_INVALID_ARG, "input '" + input_ + "' must be INT32 [batch, " +
                                                      std::to_string(input_width_) + "]");
    }
    const size_t batch = static_cast<size_t>(ids.shape[0]);
    const float* weights = nullptr;
    if (!weights_.empty()) {
      const InputTensor& given = inputs.get(weights_);
      if (given.datatype != TRITONSERVER_TYPE_FP32 || given.shape != ids.shape) {
        throw Error(TRITONSERVER_ERROR_INVALID_ARG, "input '" + weights_ + "' must be FP32 shaped like '" + input_ + "'");
      }
      weights = reinterpret_cast<const float*>(given.data);
    }
    const int32_t* packed = reinterpret_cast<const int32_t*>(ids.data);
    const std::string invalid = rows_->invalid_id(packed, batch);
    if (!invalid.empty()) throw Error(TRITONSERVER_ERROR_INVALID_ARG, "input '" + input_ + "': " + invalid);
    if (std::find(outputs.begin(), outputs.end(), output_) == outputs.end()) return;
    size_t byte_size = 0;
    float* out = reinterpret_cast<float*>(
        add_output(response, output_spec_, {static_cast<int64_t>(batch), static_cast<int64_t>(rows_->output_width())},
                   &byte_size));
    rows_->pool(packed, weights, batch, out);
  }

  uint64_t batch_size(const RequestInputs& inputs) const override {
    const InputTensor& ids = inputs.get(input_);
    return ids.shape.empty() ? 1 : static_cast<uint64_t>(std::max<int64_t>(ids.shape[0], 0));
  }

 private:
  std::string input_;
  std::string output_;
  std::string weights_;
  size_t input_width_ = 0;
  TensorSpec output_spec_;
  std::unique_ptr<GroupRows> rows_;
};

}  // namespace

std::unique_ptr<Step> make_shard_group_step(const ModelConfig& config, const std::string& version_dir) {
  return std::make_unique<ShardGroupStep>(config, version_dir);
}

}  // namespace recgen
