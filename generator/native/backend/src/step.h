// A step of recgen's ensembles served natively. Which one a model is comes from its parameter `recgen_native_step`.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "tensors.h"

namespace recgen {

class Step {
 public:
  virtual ~Step() = default;
  // Serves one request on instance `instance` (a number from add_instance): reads `inputs`, adds each of `outputs`
  // to `response`. Throws Error for a bad request; the caller answers that request alone with it. Instances run
  // concurrently; each calls from one thread at a time.
  virtual void execute(const RequestInputs& inputs, const std::vector<std::string>& outputs,
                       TRITONBACKEND_Response* response, size_t instance) const = 0;
  // Prepares what an instance keeps of its own (before it serves); returns its number.
  virtual size_t add_instance() { return 0; }
  // Why to shed every request of the batch about to run (UNAVAILABLE, read unread); empty: serve them.
  virtual std::string shed_message() const { return ""; }
  // The number of samples in a request (its batch dimension, or 1 when the model has none), for statistics.
  virtual uint64_t batch_size(const RequestInputs& inputs) const = 0;
};

// The step `config` names (its files in `version_dir`; `server` the server that loads it), built once per model and
// shared by its instances.
std::unique_ptr<Step> make_step(const ModelConfig& config, const std::string& version_dir,
                                TRITONSERVER_Server* server);

// Each step's constructor.
std::unique_ptr<Step> make_floor_step(const ModelConfig& config);
std::unique_ptr<Step> make_shard_group_step(const ModelConfig& config, const std::string& version_dir);

}  // namespace recgen
