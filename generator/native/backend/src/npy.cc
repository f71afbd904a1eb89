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
  if (descr == "<i4") return 4;
  if (descr == "<i8") return 8;
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

void MappedFile::advise_random() const {
  // Advice only: where the kernel refuses it, the pages are read ahead as usual and the rows are still correct.
  if (data_ != nullptr) ::madvise(const_cast<uint8_t*>(data_), size_, MADV_RANDOM);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

MappedFile::MappedFile(MappedFile&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

NpyMatrix::NpyMatrix(const std::string& path, const std::string& descr)
    : NpyMatrix(path, {descr.c_str()}, NpyShape::kMatrix) {}

NpyHeader parse_npy_header(const uint8_t* data, size_t size, const std::string& path,
                           std::initializer_list<const char*> descrs, size_t dims) {
  // Format: "\x93NUMPY", major, minor, header length (2 bytes in 1.0, 4 in 2.0 and 3.0), an ASCII dict, values.
  static const char magic[] = "\x93NUMPY";
  if (size < 10 || std::memcmp(data, magic, 6) != 0) unreadable(path, "not a .npy file");
  const uint8_t major = data[6];
  size_t header_bytes = 0;
  size_t prefix = 0;
  if (major == 1) {
    header_bytes = data[8] | (data[9] << 8);
    prefix = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) unreadable(path, "truncated header");
    header_bytes = static_cast<size_t>(data[8]) | (static_cast<size_t>(data[9]) << 8) |
                   (static_cast<size_t>(data[10]) << 16) | (static_cast<size_t>(data[11]) << 24);
    prefix = 12;
  } else {
    unreadable(path, "unknown .npy version " + std::to_string(major));
  }
  if (prefix + header_bytes > size) unreadable(path, "truncated header");
  const std::string header(reinterpret_cast<const char*>(data) + prefix, header_bytes);
  NpyHeader parsed;
  const std::string found_descr = header_value(header, "descr");
  std::string allowed;
  for (const char* descr : descrs) {
    if (found_descr == "'" + std::string(descr) + "'") parsed.descr = descr;
    allowed += (allowed.empty() ? "'" : " or '") + std::string(descr) + "'";
  }
  if (parsed.descr.empty()) unreadable(path, "expected values of type " + allowed + " (" + header.substr(0, 80) + ")");
  if (header_value(header, "fortran_order") != "False") unreadable(path, "not in C order");
  parsed.shape = shape_of(header_value(header, "shape"));
  if (parsed.shape.size() != dims) {
    unreadable(path, "expected a " + std::to_string(dims) + "-D array (" + header.substr(0, 80) + ")");
  }
  parsed.values_offset = prefix + header_bytes;
  size_t elements = 1;
  for (const size_t dim : parsed.shape) {
    if (dim != 0 && elements > SIZE_MAX / dim) unreadable(path, "shape too large");
    elements *= dim;
  }
  const size_t element = element_size(parsed.descr);
  const size_t available = size - parsed.values_offset;
  if (element != 0 && elements > available / element) {
    unreadable(path, "holds " + std::to_string(available) + " bytes of values, its shape needs " +
                         std::to_string(elements * element));
  }
  return parsed;
}

NpyMatrix::NpyMatrix(const std::string& path, std::initializer_list<const char*> descrs, NpyShape expected)
    : file_(path) {
  const size_t dims = expected == NpyShape::kMatrix ? 2 : 1;
  const NpyHeader header = parse_npy_header(file_.data(), file_.size(), path, descrs, dims);
  descr_ = header.descr;
  rows_ = header.shape[0];
  columns_ = dims == 2 ? header.shape[1] : 1;
  row_bytes_ = columns_ * element_size(descr_);
  values_ = file_.data() + header.values_offset;
}

void NpyMatrix::touch() const {
  volatile uint8_t sum = 0;
  const size_t total = rows_ * row_bytes_;
  for (size_t offset = 0; offset < total; offset += 4096) sum = sum + values_[offset];
}

}  // namespace recgen
