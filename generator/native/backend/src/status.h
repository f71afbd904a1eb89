// Errors inside the backend: thrown as recgen::Error, turned into a TRITONSERVER_Error at the API boundary.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

#include "triton_api.h"

namespace recgen {

// An error with the Triton code it is reported under (INVALID_ARG for a bad request, INTERNAL for a fault of ours).
class Error : public std::runtime_error {
 public:
  Error(TRITONSERVER_Error_Code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  TRITONSERVER_Error_Code code() const { return code_; }

 private:
  TRITONSERVER_Error_Code code_;
};

struct ServerErrorDeleter {
  void operator()(TRITONSERVER_Error* error) const { TRITONSERVER_ErrorDelete(error); }
};
// A TRITONSERVER_Error this code owns (deleted unless released to the server).
using ServerError = std::unique_ptr<TRITONSERVER_Error, ServerErrorDeleter>;

// Throws recgen::Error when a Triton call failed, with `what` naming the call; the server's error is freed.
inline void check(TRITONSERVER_Error* raw, const char* what) {
  ServerError error(raw);
  if (error) {
    throw Error(TRITONSERVER_ErrorCode(error.get()), std::string(what) + ": " + TRITONSERVER_ErrorMessage(error.get()));
  }
}

// A new server error for `error`, owned by the caller.
inline TRITONSERVER_Error* to_server_error(const Error& error) {
  return TRITONSERVER_ErrorNew(error.code(), error.what());
}

// Runs `body` and returns nullptr, or the error it threw as a TRITONSERVER_Error (what an entry point returns).
template <typename Body>
TRITONSERVER_Error* guarded(Body&& body) {
  try {
    body();
    return nullptr;
  } catch (const Error& error) {
    return to_server_error(error);
  } catch (const std::exception& error) {
    return TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, error.what());
  }
}

// Writes `message` to the server's log at `level`.
void log(TRITONSERVER_LogLevel level, const std::string& message);

}  // namespace recgen
