#include "step.h"

#include "status.h"

namespace recgen {

std::unique_ptr<Step> make_step(const ModelConfig& config) {
  const std::string& kind = config.parameter("recgen_native_step");
  if (kind == "floor") return make_floor_step(config);
  throw Error(TRITONSERVER_ERROR_INVALID_ARG, "model '" + config.name + "': recgen_native_step '" + kind +
                                                  "' is not a step this backend serves (floor)");
}

}  // namespace recgen
