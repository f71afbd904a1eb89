// The identity-cost step (`recgen_native_step: floor`): reads every input and answers zeros of every output.
//
// bench/floor.py serves it in place of a recgen step, keeping the step's config, to measure what tritonserver costs
// per native step with recgen's tensors (its Python twin is bench/floor_model.py).
#include <algorithm>
#include <cstring>

#include "status.h"
#include "step.h"

namespace recgen {
namespace {

class FloorStep : public Step {
 public:
  explicit FloorStep(const ModelConfig& config) : config_(config) {}

  void execute(const RequestInputs& inputs, const std::vector<std::string>& outputs,
               TRITONBACKEND_Response* response, size_t /*instance*/) const override {
    volatile uint8_t touched = 0;  // read every input's last byte, as the Python twin reads every input
    for (const auto& input : inputs.all()) {
      if (input.byte_size > 0) touched = touched ^ input.data[input.byte_size - 1];
    }
    const uint64_t batch = batch_size(inputs);
    for (const auto& name : outputs) {
      const auto spec = std::find_if(config_.outputs.begin(), config_.outputs.end(),
                                     [&](const TensorSpec& output) { return output.name == name; });
      if (spec == config_.outputs.end()) {
        throw Error(TRITONSERVER_ERROR_INVALID_ARG, "model '" + config_.name + "' has no output '" + name + "'");
      }
      std::vector<int64_t> shape;
      if (config_.max_batch_size > 0) shape.push_back(static_cast<int64_t>(batch));
      for (const int64_t dim : spec->dims) shape.push_back(std::max<int64_t>(dim, 1));
      size_t byte_size = 0;
      uint8_t* buffer = add_output(response, *spec, shape, &byte_size);
      std::memset(buffer, 0, byte_size);
    }
  }

  uint64_t batch_size(const RequestInputs& inputs) const override {
    if (config_.max_batch_size <= 0 || inputs.all().empty() || inputs.all().front().shape.empty()) return 1;
    return static_cast<uint64_t>(std::max<int64_t>(inputs.all().front().shape.front(), 0));
  }

 private:
  ModelConfig config_;
};

}  // namespace

std::unique_ptr<Step> make_floor_step(const ModelConfig& config) { return std::make_unique<FloorStep>(config); }

}  // namespace recgen
