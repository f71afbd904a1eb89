#include "step.h"

#include "router_step.h"
#include "status.h"

namespace recgen {

namespace {

// A model is served only by the build of the sources it was written for: the typed parameters, the data files and
// the messages are a contract between one recgen and its backend.
void check_version(const ModelConfig& config) {
  const std::string& wanted = config.parameter("recgen_native_version");
  if (wanted != RECGEN_NATIVE_VERSION) {
    throw Error(TRITONSERVER_ERROR_UNSUPPORTED,
                "model '" + config.name + "' was written for recgen's native backend " + wanted +
                    ", but this libtriton_recgen.so is " + RECGEN_NATIVE_VERSION +
                    ": serve the repository with the library it carries, or build it again with this recgen");
  }
}

}  // namespace

std::unique_ptr<Step> make_step(const ModelConfig& config, const std::string& version_dir,
                                TRITONSERVER_Server* server) {
  check_version(config);
  const std::string& kind = config.parameter("recgen_native_step");
  if (kind == "floor") return make_floor_step(config);
  if (kind == "shard_group") return make_shard_group_step(config, version_dir);
  if (kind == "router") return make_router_step(config, version_dir, server);
  throw Error(TRITONSERVER_ERROR_INVALID_ARG, "model '" + config.name + "': recgen_native_step '" + kind +
                                                  "' is not a step this backend serves (floor, shard_group, router)");
}

}  // namespace recgen
