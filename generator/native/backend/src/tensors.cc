#include "tensors.h"

#include <cstdint>
#include <cstring>

#include "status.h"

namespace recgen {

size_t InputTensor::elements() const {
  size_t count = 1;
  for (const int64_t dim : shape) count *= static_cast<size_t>(dim < 0 ? 0 : dim);
  return count;
}

RequestInputs::RequestInputs(TRITONBACKEND_Request* request) {
  uint32_t count = 0;
  check(TRITONBACKEND_RequestInputCount(request, &count), "reading the request's input count");
  inputs_.reserve(count);
  for (uint32_t index = 0; index < count; ++index) {
    TRITONBACKEND_Input* input = nullptr;
    check(TRITONBACKEND_RequestInputByIndex(request, index, &input), "reading a request input");
    const char* name = nullptr;
    const int64_t* shape = nullptr;
    uint32_t dims = 0;
    uint64_t byte_size = 0;
    uint32_t buffers = 0;
    InputTensor tensor;
    check(TRITONBACKEND_InputProperties(input, &name, &tensor.datatype, &shape, &dims, &byte_size, &buffers),
          "reading an input's properties");
    tensor.name = name;
    tensor.shape.assign(shape, shape + dims);
    tensor.byte_size = static_cast<size_t>(byte_size);
    const size_t expected = tensor.elements() * element_bytes(tensor.datatype);
    if (element_bytes(tensor.datatype) == 0 || expected != tensor.byte_size) {
      throw Error(TRITONSERVER_ERROR_INVALID_ARG, "input '" + tensor.name + "' holds " +
                                                      std::to_string(tensor.byte_size) + " bytes, its shape needs " +
                                                      std::to_string(expected));
    }
    std::vector<std::pair<const uint8_t*, size_t>> parts;
    size_t total = 0;
    for (uint32_t part = 0; part < buffers; ++part) {
      const void* base = nullptr;
      uint64_t size = 0;
      TRITONSERVER_MemoryType memory = TRITONSERVER_MEMORY_CPU;
      int64_t memory_id = 0;
      check(TRITONBACKEND_InputBuffer(input, part, &base, &size, &memory, &memory_id), "reading an input buffer");
      if (memory == TRITONSERVER_MEMORY_GPU) {
        throw Error(TRITONSERVER_ERROR_INVALID_ARG, "input '" + tensor.name + "' is in GPU memory; this step reads CPU memory");
      }
      parts.emplace_back(static_cast<const uint8_t*>(base), static_cast<size_t>(size));
      total += static_cast<size_t>(size);
    }
    if (total != tensor.byte_size) {
      throw Error(TRITONSERVER_ERROR_INVALID_ARG, "input '" + tensor.name + "' buffers hold " + std::to_string(total) +
                                                      " bytes of " + std::to_string(tensor.byte_size));
    }
    const size_t alignment = element_bytes(tensor.datatype);
    const bool aligned = parts.size() == 1 && reinterpret_cast<uintptr_t>(parts.front().first) % alignment == 0;
    if (aligned) {
      tensor.data = parts.front().first;
    } else if (!parts.empty()) {  // split, or not aligned for its type (a frontend may place it anywhere): copied
      auto copy = std::make_unique<std::vector<uint8_t>>(total);
      size_t offset = 0;
      for (const auto& [base, size] : parts) {
        std::memcpy(copy->data() + offset, base, size);
        offset += size;
      }
      tensor.data = copy->data();
      gathered_.push_back(std::move(copy));
    }
    inputs_.push_back(std::move(tensor));
  }
}

const InputTensor& RequestInputs::get(const std::string& name) const {
  for (const auto& input : inputs_) {
    if (input.name == name) return input;
  }
  throw Error(TRITONSERVER_ERROR_INVALID_ARG, "the request has no input '" + name + "'");
}

void ResponseDeleter::operator()(TRITONBACKEND_Response* response) const {
  ServerError ignored(TRITONBACKEND_ResponseDelete(response));
}

uint8_t* add_output(TRITONBACKEND_Response* response, const TensorSpec& spec, const std::vector<int64_t>& shape,
                    size_t* byte_size) {
  size_t elements = 1;
  for (const int64_t dim : shape) elements *= static_cast<size_t>(dim);
  *byte_size = elements * element_bytes(spec.datatype);
  TRITONBACKEND_Output* output = nullptr;
  check(TRITONBACKEND_ResponseOutput(response, &output, spec.name.c_str(), spec.datatype, shape.data(),
                                     static_cast<uint32_t>(shape.size())),
        "adding an output");
  void* buffer = nullptr;
  TRITONSERVER_MemoryType memory = TRITONSERVER_MEMORY_CPU;
  int64_t memory_id = 0;
  check(TRITONBACKEND_OutputBuffer(output, &buffer, *byte_size, &memory, &memory_id), "allocating an output");
  if (memory == TRITONSERVER_MEMORY_GPU) {
    throw Error(TRITONSERVER_ERROR_INTERNAL, "output '" + spec.name + "' was given GPU memory; this step writes CPU memory");
  }
  return static_cast<uint8_t*>(buffer);
}

std::vector<std::string> requested_outputs(TRITONBACKEND_Request* request) {
  uint32_t count = 0;
  check(TRITONBACKEND_RequestOutputCount(request, &count), "reading the requested outputs");
  std::vector<std::string> names;
  names.reserve(count);
  for (uint32_t index = 0; index < count; ++index) {
    const char* name = nullptr;
    check(TRITONBACKEND_RequestOutputName(request, index, &name), "reading a requested output");
    names.emplace_back(name);
  }
  return names;
}

}  // namespace recgen
