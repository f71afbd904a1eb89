// .npy files mapped read-only: the rows a build wrote, read in place and shared by every instance of a model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

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
  // Tells the kernel the pages are read at random: no read-ahead and no fault-around, so a page comes into memory
  // only when it is read (paged rows).
  void advise_random() const;

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// What a .npy header says: the element type, the shape, and where the values start.
struct NpyHeader {
  std::string descr;
  std::vector<size_t> shape;
  size_t values_offset = 0;
};

// Parses the header of the .npy bytes `data`; Error (naming `path`) unless the array is C-order, of one of `descrs`,
// with `dims` dimensions, and the values its shape needs lie within `size`.
NpyHeader parse_npy_header(const uint8_t* data, size_t size, const std::string& path,
                           std::initializer_list<const char*> descrs, size_t dims);

// How many dimensions a file's array must have: [rows, columns], or [rows] read as [rows, 1].
enum class NpyShape { kMatrix, kVector };

// A 2-D C-order array of a .npy file: its element type, shape and the bytes after the header, bounds checked
// against the mapped file when opened.
class NpyMatrix {
 public:
  // Opens `path`; Error unless it is a little-endian C-order [rows, columns] array of `descr` ('<f4', '<f2', '|u1').
  NpyMatrix(const std::string& path, const std::string& descr);
  // Opens `path`, an array of one of `descrs` ('<i4', '<i8', ...) of `shape`.
  NpyMatrix(const std::string& path, std::initializer_list<const char*> descrs, NpyShape shape);

  // The element type the file holds ('<f4', '<i8', ...).
  const std::string& descr() const { return descr_; }
  size_t rows() const { return rows_; }
  size_t columns() const { return columns_; }
  // Row `row`'s first element (row < rows(), unchecked: callers check ids against rows()).
  const uint8_t* row(size_t row) const { return values_ + row * row_bytes_; }
  // Reads every byte once, so that no request pays for a page's first read.
  void touch() const;
  // Leaves the pages on disk until read, one at a time (MappedFile::advise_random).
  void advise_random() const { file_.advise_random(); }

 private:
  MappedFile file_;
  std::string descr_;
  const uint8_t* values_ = nullptr;
  size_t rows_ = 0;
  size_t columns_ = 0;
  size_t row_bytes_ = 0;
};

}  // namespace recgen
