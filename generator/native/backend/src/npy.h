// .npy files mapped read-only: the rows a build wrote, read in place and shared by every instance of a model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace recgen {

// A read-only private mapping of a whole file (unmapped when destroyed; movable, not copyable).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&&) = delete;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// A 2-D C-order array of a .npy file: its element type, shape and the bytes after the header, bounds checked
// against the mapped file when opened.
class NpyMatrix {
 public:
  // Opens `path`; Error unless it is a little-endian C-order [rows, columns] array of `descr` ('<f4', '<f2', '|u1').
  NpyMatrix(const std::string& path, const std::string& descr);

  size_t rows() const { return rows_; }
  size_t columns() const { return columns_; }
  // Row `row`'s first element (row < rows(), unchecked: callers check ids against rows()).
  const uint8_t* row(size_t row) const { return values_ + row * row_bytes_; }
  // Reads every byte once, so that no request pays for a page's first read.
  void touch() const;

 private:
  MappedFile file_;
  const uint8_t* values_ = nullptr;
  size_t rows_ = 0;
  size_t columns_ = 0;
  size_t row_bytes_ = 0;
};

}  // namespace recgen
