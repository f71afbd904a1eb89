// The shard-group step (`recgen_native_step: shard_group`) of the separate and distributed layouts: the native twin
// of shard_model.py, reading the same typed parameter `shards` (recgen_params.ShardGroupParams).
#include <algorithm>
#include <string>

#include "params.h"
#include "rows.h"
#include "status.h"
#include "step.h"

namespace recgen {
namespace {

class ShardGroupStep : public Step {
 public:
  ShardGroupStep(const ModelConfig& config, const std::string& version_dir) {
    const JsonParameter parameter(config, "shards");
    const rapidjson::Value& root = parameter.root();
    parameter.expect_keys(root, {"input", "output", "shards", "slots", "weights_input", "row_dtype", "fault_in"},
                          "ShardGroupParams");
    input_ = parameter.text(root, "input");
    output_ = parameter.text(root, "output");
    weights_ = parameter.text(root, "weights_input");
    const TensorSpec& ids = tensor_spec(parameter, config.inputs, input_, "input");
    if (ids.datatype != TRITONSERVER_TYPE_INT32 || ids.dims.size() != 1 || ids.dims[0] < 0) {
      parameter.fail("input '" + input_ + "' must be INT32 [width]");
    }
    input_width_ = static_cast<size_t>(ids.dims[0]);
    if (!weights_.empty()) {
      const TensorSpec& weights = tensor_spec(parameter, config.inputs, weights_, "weights input");
      if (weights.datatype != TRITONSERVER_TYPE_FP32 || weights.dims != ids.dims) {
        parameter.fail("weights input '" + weights_ + "' must be FP32 shaped like '" + input_ + "'");
      }
    }
    std::vector<GroupMemberFiles> members;
    for (const auto& shard : parameter.list(root, "shards").GetArray()) {
      parameter.expect_keys(shard, {"table", "shard", "rows_file", "scales_file"}, "GroupMember");
      members.push_back(
          {parameter.text(shard, "table"), parameter.text(shard, "rows_file"), parameter.text(shard, "scales_file")});
    }
    rows_ = std::make_unique<GroupRows>(version_dir, members, read_slots(parameter, root),
                                        row_dtype_from_name(parameter.text(root, "row_dtype")), input_width_);
    if (parameter.boolean(root, "fault_in")) {
      rows_->touch();
    } else {
      rows_->advise_random();  // paged: a page comes into memory when a request reads it
    }
    output_spec_ = tensor_spec(parameter, config.outputs, output_, "output");
    if (output_spec_.datatype != TRITONSERVER_TYPE_FP32 || output_spec_.dims.size() != 1 ||
        output_spec_.dims[0] != static_cast<int64_t>(rows_->output_width())) {
      parameter.fail("output '" + output_ + "' must be FP32 [" + std::to_string(rows_->output_width()) + "]");
    }
  }

  void execute(const RequestInputs& inputs, const std::vector<std::string>& outputs,
               TRITONBACKEND_Response* response, size_t /*instance*/) const override {
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
