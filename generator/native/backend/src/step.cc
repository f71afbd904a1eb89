#include "step.h"

#include "router_step.h"
#include "status.h"

namespace recgen {

std::unique_ptr<Step> make_step(const ModelConfig& config, const std::string& version_dir,
                                TRITONSERVER_Server* server) {
  const std::string& kind = config.parameter("recgen_native_step");
  if (kind == "floor") return make_floor_step(config);
  if (kind == "shard_group") return make_shard_group_step(config, version_dir);
  if (kind == "router") return make_router_step(config, version_dir, server);
  throw Error(TRITONSERVER_ERROR_INVALID_ARG, "model '" + config.name + "': recgen_native_step '" + kind +
                                                  "' is not a step this backend serves (floor, shard_group, router)");
}

}  // namespace recgen
