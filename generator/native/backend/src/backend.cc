// libtriton_recgen.so: Triton's entry points. A model holds its config and its step, built once; an instance is a
// thread of the server that runs the model's step for each request of a batch, answering each request alone.
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config.h"
#include "status.h"
#include "step.h"
#include "tensors.h"
#include "triton_api.h"

namespace recgen {

void log(TRITONSERVER_LogLevel level, const std::string& message) {
  if (TRITONSERVER_LogIsEnabled(level)) {
    ServerError ignored(TRITONSERVER_LogMessage(level, __FILE__, __LINE__, message.c_str()));
  }
}

namespace {

uint64_t now_ns() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

struct MessageDeleter {
  void operator()(TRITONSERVER_Message* message) const { ServerError ignored(TRITONSERVER_MessageDelete(message)); }
};

struct ModelState {
  ModelConfig config;
  std::unique_ptr<Step> step;
  std::mutex instances_mutex;
};

struct InstanceState {
  std::string name;
  ModelState* model = nullptr;
  size_t index = 0;  // the step's number for this instance (Step::add_instance)
};

ModelConfig read_config(TRITONBACKEND_Model* model) {
  TRITONSERVER_Message* raw = nullptr;
  check(TRITONBACKEND_ModelConfig(model, RECGEN_MODEL_CONFIG_VERSION, &raw), "reading the model config");
  std::unique_ptr<TRITONSERVER_Message, MessageDeleter> message(raw);
  const char* json = nullptr;
  size_t byte_size = 0;
  check(TRITONSERVER_MessageSerializeToJson(message.get(), &json, &byte_size), "serializing the model config");
  return parse_model_config(json, byte_size);
}

// The model's version directory, where its files are.
std::string version_dir(TRITONBACKEND_Model* model) {
  TRITONBACKEND_ArtifactType type = TRITONBACKEND_ARTIFACT_FILESYSTEM;
  const char* location = nullptr;
  check(TRITONBACKEND_ModelRepository(model, &type, &location), "reading the model's directory");
  if (type != TRITONBACKEND_ARTIFACT_FILESYSTEM) {
    throw Error(TRITONSERVER_ERROR_UNSUPPORTED, "the model's files are not on a local filesystem");
  }
  uint64_t version = 0;
  check(TRITONBACKEND_ModelVersion(model, &version), "reading the model's version");
  return std::string(location) + "/" + std::to_string(version);
}

// Takes back and frees the state the server kept for `handle` since its initialize (a model's or an instance's).
template <typename State, typename Handle>
TRITONSERVER_Error* free_state(Handle* handle, TRITONSERVER_Error* (*get_state)(Handle*, void**)) {
  return guarded([handle, get_state] {
    void* state = nullptr;
    check(get_state(handle, &state), "reading the state to free");
    std::unique_ptr<State> owned(static_cast<State*>(state));
  });
}

// Answers one request with `message` as UNAVAILABLE, unread.
void shed_request(TRITONBACKEND_Request* request, const std::string& message) {
  TRITONBACKEND_Response* raw = nullptr;
  ServerError created(TRITONBACKEND_ResponseNew(&raw, request));
  if (!created) {
    ServerError failure(TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_UNAVAILABLE, message.c_str()));
    ServerError sent(TRITONBACKEND_ResponseSend(raw, TRITONSERVER_RESPONSE_COMPLETE_FINAL, failure.get()));
  }
}

// Answers one request (its outputs, or the error it caused); returns its batch size, and whether it succeeded.
uint64_t serve_request(const Step& step, size_t instance, TRITONBACKEND_Request* request, bool* success) {
  TRITONBACKEND_Response* raw = nullptr;
  ServerError created(TRITONBACKEND_ResponseNew(&raw, request));
  uint64_t batch = 1;
  *success = false;
  if (created) {
    log(TRITONSERVER_LOG_ERROR, std::string("cannot create a response: ") + TRITONSERVER_ErrorMessage(created.get()));
    return batch;
  }
  ResponsePtr response(raw);
  ServerError failure;
  try {
    const RequestInputs inputs(request);
    batch = step.batch_size(inputs);
    step.execute(inputs, requested_outputs(request), response.get(), instance);
    *success = true;
  } catch (const Error& error) {
    failure.reset(to_server_error(error));
  } catch (const std::exception& error) {
    failure.reset(TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, error.what()));
  }
  ServerError sent(TRITONBACKEND_ResponseSend(response.release(), TRITONSERVER_RESPONSE_COMPLETE_FINAL, failure.get()));
  if (sent) log(TRITONSERVER_LOG_ERROR, std::string("cannot send a response: ") + TRITONSERVER_ErrorMessage(sent.get()));
  return batch;
}

}  // namespace
}  // namespace recgen

using recgen::check;
using recgen::guarded;

extern "C" {

TRITONSERVER_Error* TRITONBACKEND_Initialize(TRITONBACKEND_Backend*) {
  return guarded([] {
    uint32_t major = 0;
    uint32_t minor = 0;
    check(TRITONBACKEND_ApiVersion(&major, &minor), "reading the backend API version");
    if (major != RECGEN_TRITONBACKEND_API_MAJOR || minor < RECGEN_TRITONBACKEND_API_MINOR) {
      throw recgen::Error(TRITONSERVER_ERROR_UNSUPPORTED,
                          "libtriton_recgen.so was written for backend API " +
                              std::to_string(RECGEN_TRITONBACKEND_API_MAJOR) + "." +
                              std::to_string(RECGEN_TRITONBACKEND_API_MINOR) + " or a later minor; this server has " +
                              std::to_string(major) + "." + std::to_string(minor));
    }
  });
}

TRITONSERVER_Error* TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model* model) {
  return guarded([model] {
    auto state = std::make_unique<recgen::ModelState>();
    state->config = recgen::read_config(model);
    TRITONSERVER_Server* server = nullptr;
    check(TRITONBACKEND_ModelServer(model, &server), "reading the model's server");
    state->step = recgen::make_step(state->config, recgen::version_dir(model), server);
    recgen::log(TRITONSERVER_LOG_INFO, "recgen native step '" + state->config.parameter("recgen_native_step") +
                                           "' for model '" + state->config.name + "'");
    check(TRITONBACKEND_ModelSetState(model, state.get()), "keeping the model state");
    state.release();  // owned by the server until TRITONBACKEND_ModelFinalize
  });
}

TRITONSERVER_Error* TRITONBACKEND_ModelFinalize(TRITONBACKEND_Model* model) {
  return recgen::free_state<recgen::ModelState>(model, TRITONBACKEND_ModelState);
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance* instance) {
  return guarded([instance] {
    auto state = std::make_unique<recgen::InstanceState>();
    const char* name = nullptr;
    check(TRITONBACKEND_ModelInstanceName(instance, &name), "reading the instance name");
    state->name = name;
    TRITONSERVER_InstanceGroupKind kind = TRITONSERVER_INSTANCEGROUPKIND_AUTO;
    check(TRITONBACKEND_ModelInstanceKind(instance, &kind), "reading the instance kind");
    if (kind != TRITONSERVER_INSTANCEGROUPKIND_CPU) {
      throw recgen::Error(TRITONSERVER_ERROR_UNSUPPORTED,
                          "instance '" + state->name +
                              "': recgen's native steps run on the CPU only (instance_group kind KIND_CPU); place "
                              "this step on the CPU or serve it with an engine that runs on the GPU");
    }
    TRITONBACKEND_Model* model = nullptr;
    check(TRITONBACKEND_ModelInstanceModel(instance, &model), "reading the instance's model");
    void* model_state = nullptr;
    check(TRITONBACKEND_ModelState(model, &model_state), "reading the model state");
    state->model = static_cast<recgen::ModelState*>(model_state);
    {
      const std::lock_guard<std::mutex> lock(state->model->instances_mutex);  // instances may start concurrently
      state->index = state->model->step->add_instance();
    }
    check(TRITONBACKEND_ModelInstanceSetState(instance, state.get()), "keeping the instance state");
    state.release();  // owned by the server until TRITONBACKEND_ModelInstanceFinalize
  });
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance* instance) {
  return recgen::free_state<recgen::InstanceState>(instance, TRITONBACKEND_ModelInstanceState);
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance* instance,
                                                       TRITONBACKEND_Request** requests, uint32_t request_count) {
  // Past this point every request is ours: each gets a response (or its error) and is released, so this returns
  // an error only when the instance state itself cannot be read (then Triton still owns the requests).
  void* raw = nullptr;
  if (TRITONSERVER_Error* error = TRITONBACKEND_ModelInstanceState(instance, &raw)) return error;
  const recgen::InstanceState& state = *static_cast<recgen::InstanceState*>(raw);
  const recgen::Step& step = *state.model->step;
  const uint64_t exec_start_ns = recgen::now_ns();
  const std::string shed = step.shed_message();  // if not empty: every request at once and unread, so the queue drains
  std::vector<bool> succeeded(request_count, false);
  uint64_t batch = 0;
  for (uint32_t index = 0; index < request_count; ++index) {
    if (!shed.empty()) {
      recgen::shed_request(requests[index], shed);
      continue;
    }
    bool success = false;
    batch += recgen::serve_request(step, state.index, requests[index], &success);
    succeeded[index] = success;
  }
  // Each request is charged the whole execution, as Triton's own backends report a batch (the admission control's
  // time per request undoes that with executions / requests); then it is released.
  const uint64_t exec_end_ns = recgen::now_ns();
  for (uint32_t index = 0; index < request_count; ++index) {
    recgen::ServerError reported(TRITONBACKEND_ModelInstanceReportStatistics(
        instance, requests[index], succeeded[index], exec_start_ns, exec_start_ns, exec_end_ns, exec_end_ns));
    recgen::ServerError released(TRITONBACKEND_RequestRelease(requests[index], TRITONSERVER_REQUEST_RELEASE_ALL));
  }
  if (batch > 0) {
    recgen::ServerError reported(TRITONBACKEND_ModelInstanceReportBatchStatistics(
        instance, batch, exec_start_ns, exec_start_ns, exec_end_ns, exec_end_ns));
  }
  return nullptr;
}

}  // extern "C"
