#include "npy.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <cstdint>
#include <vector>

#include "status.h"

namespace recgen {
namespace {

[[noreturn]] void unreadable(const std::string& path, const std::string& why) {
  throw Error(TRITONSERVER_ERROR_INVALID_ARG, path + ": " + why);
}

// The text of `key`'s value in a .npy header dict ({'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }):
// up to the next top-level comma or the closing brace; empty when the key is absent.
std::string header_value(const std::string& header, const std::string& key) {
  const size_t at = header.find("'" + key + "':");
  if (at == std::string::npos) return "";
  size_t begin = at + key.size() + 3;
  while (begin < header.size() && header[begin] == ' ') ++begin;
  size_t end = begin;
  int depth = 0;
  while (end < header.size()) {
    const char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    ++end;
  }
  return header.substr(begin, end - begin);
}

// "(3, 4)" -> {3, 4}; empty when it is not a tuple of non-negative integers.
std::vector<size_t> shape_of(const std::string& text) {
  std::vector<size_t> dims;
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') return dims;
  size_t value = 0;
  bool digits = false;
  for (size_t i = 1; i + 1 < text.size(); ++i) {
    const char c = text[i];
    if (c >= '0' && c <= '9') {
      if (value > (SIZE_MAX - 9) / 10) return {};
      value = value * 10 + static_cast<size_t>(c - '0');
      digits = true;
    } else if (c == ',') {
      if (!digits) return {};
      dims.push_back(value);
      value = 0;
      digits = false;
    } else if (c != ' ') {
      return {};
    }
  }
  if (digits) dims.push_back(value);
  return dims;
}

size_t element_size(const std::string& descr) {
  if (descr == "<f4") return 4;
  if (descr == "<f2") return 2;
  if (descr == "|u1") return 1;
  return 0;
}

}  // namespace

MappedFile::MappedFile(const std::string& path) {
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) unreadable(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat info {};
  if (::fstat(descriptor, &info) != 0) {
    const int error = errno;
    ::close(descriptor);
    unreadable(path, std::string("cannot stat: ") + std::strerror(error));
  }
  size_ = static_cast<size_t>(info.st_size);
  if (size_ > 0) {
    void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, descriptor, 0);
    const int error = errno;
    ::close(descriptor);
    if (mapped == MAP_FAILED) unreadable(path, std::string("cannot map: ") + std::strerror(error));
    data_ = static_cast<const uint8_t*>(mapped);
  } else {
    ::close(descriptor);
  }
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

MappedFile::MappedFile(MappedFile&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

NpyMatrix::NpyMatrix(const std::string& path, const std::string& descr) : file_(path) {
  // Format: "\x93NUMPY", major, minor, header length (2 bytes in 1.0, 4 in 2.0 and 3.0), an ASCII dict, values.
  static const char magic[] = "\x93NUMPY";
  if (file_.size() < 10 || std::memcmp(file_.data(), magic, 6) != 0) unreadable(path, "not a .npy file");
  const uint8_t major = file_.data()[6];
  size_t header_bytes = 0;
  size_t prefix = 0;
  if (major == 1) {
    header_bytes = file_.data()[8] | (file_.data()[9] << 8);
    prefix = 10;
  } else if (major == 2 || major == 3) {
    if (file_.size() < 12) unreadable(path, "truncated header");
    header_bytes = static_cast<size_t>(file_.data()[8]) | (static_cast<size_t>(file_.data()[9]) << 8) |
                   (static_cast<size_t>(file_.data()[10]) << 16) | (static_cast<size_t>(file_.data()[11]) << 24);
    prefix = 12;
  } else {
    unreadable(path, "unknown .npy version " + std::to_string(major));
  }
  if (prefix + header_bytes > file_.size()) unreadable(path, "truncated header");
  const std::string header(reinterpret_cast<const char*>(file_.data()) + prefix, header_bytes);
  const std::string found_descr = header_value(header, "descr");
  if (found_descr != "'" + descr + "'") {
    unreadable(path, "expected values of type '" + descr + "' (" + header.substr(0, 80) + ")");
  }
  if (header_value(header, "fortran_order") != "False") unreadable(path, "not in C order");
  const std::vector<size_t> shape = shape_of(header_value(header, "shape"));
  if (shape.size() != 2) unreadable(path, "expected a 2-D array (" + header.substr(0, 80) + ")");
  rows_ = shape[0];
  columns_ = shape[1];
  row_bytes_ = columns_ * element_size(descr);
  values_ = file_.data() + prefix + header_bytes;
  const size_t available = file_.size() - prefix - header_bytes;
  if (row_bytes_ != 0 && rows_ > available / row_bytes_) {
    unreadable(path, "holds " + std::to_string(available) + " bytes of values, its shape needs " +
                         std::to_string(rows_ * row_bytes_));
  }
}

void NpyMatrix::touch() const {
  volatile uint8_t sum = 0;
  const size_t total = rows_ * row_bytes_;
  for (size_t offset = 0; offset < total; offset += 4096) sum = sum + values_[offset];
}

}  // namespace recgen
