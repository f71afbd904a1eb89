// A request's inputs and a response's outputs as contiguous CPU memory, with every size checked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config.h"
#include "triton_api.h"

namespace recgen {

// One input tensor: its name, type, shape and bytes (contiguous and aligned for its type; copied when the server
// split it or placed it unaligned).
struct InputTensor {
  std::string name;
  TRITONSERVER_DataType datatype = TRITONSERVER_TYPE_INVALID;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t byte_size = 0;

  // The number of elements the shape holds.
  size_t elements() const;
};

// Every input of one request. Views point into the server's buffers, or into `gathered_` for an input that came in
// several buffers; both stay valid until the request is released.
class RequestInputs {
 public:
  explicit RequestInputs(TRITONBACKEND_Request* request);
  const std::vector<InputTensor>& all() const { return inputs_; }
  // The input `name`, or an INVALID_ARG Error naming it.
  const InputTensor& get(const std::string& name) const;

 private:
  std::vector<InputTensor> inputs_;
  std::vector<std::unique_ptr<std::vector<uint8_t>>> gathered_;
};

struct ResponseDeleter {
  void operator()(TRITONBACKEND_Response* response) const;
};
// A response not yet sent (deleted unsent when dropped).
using ResponsePtr = std::unique_ptr<TRITONBACKEND_Response, ResponseDeleter>;

// Adds the output `spec` with `shape` to `response` and returns its CPU buffer of exactly the bytes the shape needs.
uint8_t* add_output(TRITONBACKEND_Response* response, const TensorSpec& spec, const std::vector<int64_t>& shape,
                    size_t* byte_size);

// The names of the outputs the request asks for (all of the model's when it names none).
std::vector<std::string> requested_outputs(TRITONBACKEND_Request* request);

}  // namespace recgen
