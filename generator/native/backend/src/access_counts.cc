#include "access_counts.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "npy.h"
#include "status.h"

namespace recgen {
namespace {

constexpr const char* kCountsSuffix = ".counts.npy";
constexpr const char* kSamplesSuffix = ".samples.npy";
constexpr const char* kSinceSuffix = ".since.npy";
constexpr const char* kRetired = "retired";
constexpr uint32_t kMaxCount = UINT32_MAX;

[[noreturn]] void fail(const std::string& what, const std::string& path) {
  throw Error(TRITONSERVER_ERROR_INTERNAL, what + " " + path + ": " + std::strerror(errno));
}

// A descriptor closed when it goes out of scope.
class Descriptor {
 public:
  explicit Descriptor(int value) : value_(value) {}
  ~Descriptor() {
    if (value_ >= 0) ::close(value_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  int get() const { return value_; }

 private:
  int value_;
};

size_t element_bytes_of(const std::string& descr) { return descr == "<u4" ? 4 : 8; }

// numpy's format 1.0 header for a 1-D array, padded with spaces to a multiple of 64 bytes.
std::string npy_header(const std::string& descr, size_t elements) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + std::to_string(elements) + ",), }";
  const size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict.push_back('\n');
  std::string header("\x93NUMPY\x01\x00", 8);
  header.push_back(static_cast<char>(dict.size() & 0xff));
  header.push_back(static_cast<char>((dict.size() >> 8) & 0xff));
  return header + dict;
}

double unix_now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void check_private(const std::string& folder) {
  struct stat info {};
  if (::lstat(folder.c_str(), &info) != 0) fail("cannot inspect", folder);
  std::string problem;
  if (!S_ISDIR(info.st_mode)) {
    problem = "is not a folder (a link or a file)";
  } else if (info.st_uid != ::geteuid()) {
    problem = "belongs to uid " + std::to_string(info.st_uid) + ", not to this user (uid " +
              std::to_string(::geteuid()) + ")";
  } else if ((info.st_mode & 077) != 0) {
    problem = "is open to other users (must be 0700)";
  }
  if (!problem.empty()) {
    throw Error(TRITONSERVER_ERROR_INTERNAL, "recgen's runtime folder " + folder + " " + problem +
                                                 "; recgen will not use it. Remove it (or, if it is yours, `chmod 700 " +
                                                 folder + "`) and start again");
  }
}

std::string private_folder(const std::string& folder) {
  if (::mkdir(folder.c_str(), 0700) != 0 && errno != EEXIST) fail("cannot create", folder);
  check_private(folder);
  return folder;
}

}  // namespace

std::string private_server_folder(const std::string& base, const std::string& kind) {
  if (::mkdir(base.c_str(), 0700) != 0 && errno != EEXIST) fail("cannot create", base);
  const std::string user = private_folder(base + "/recgen-" + std::to_string(::geteuid()));
  return private_folder(private_folder(user + "/" + kind) + "/" + std::to_string(::getpid()));
}

SharedNpy SharedNpy::create(const std::string& path, const std::string& descr, size_t elements) {
  const std::string header = npy_header(descr, elements);
  const Descriptor file(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (file.get() < 0) fail("cannot create", path);
  const size_t size = header.size() + elements * element_bytes_of(descr);
  if (::ftruncate(file.get(), static_cast<off_t>(size)) != 0) fail("cannot size", path);
  void* mapped = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, file.get(), 0);
  if (mapped == MAP_FAILED) fail("cannot map", path);
  SharedNpy array;
  array.data_ = static_cast<uint8_t*>(mapped);
  array.size_ = size;
  std::memcpy(array.data_, header.data(), header.size());
  array.values_ = array.data_ + header.size();
  array.elements_ = elements;
  return array;
}

SharedNpy SharedNpy::open(const std::string& path, const std::string& descr) {
  const Descriptor file(::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
  if (file.get() < 0) fail("cannot open", path);
  struct stat info {};
  if (::fstat(file.get(), &info) != 0) fail("cannot inspect", path);
  const size_t size = static_cast<size_t>(info.st_size);
  if (size == 0) throw Error(TRITONSERVER_ERROR_INTERNAL, path + ": empty");
  void* mapped = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, file.get(), 0);
  if (mapped == MAP_FAILED) fail("cannot map", path);
  SharedNpy array;
  array.data_ = static_cast<uint8_t*>(mapped);
  array.size_ = size;
  const NpyHeader header = parse_npy_header(array.data_, size, path, {descr.c_str()}, 1);
  array.values_ = array.data_ + header.values_offset;
  array.elements_ = header.shape[0];
  return array;
}

SharedNpy::~SharedNpy() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

SharedNpy::SharedNpy(SharedNpy&& other) noexcept
    : data_(other.data_), size_(other.size_), values_(other.values_), elements_(other.elements_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

AccessCounter::AccessCounter(const JsonParameter& parameter, const std::string& model_name,
                             const std::vector<CountedFeature>& features) {
  const rapidjson::Value& root = parameter.root();
  parameter.expect_keys(root, {"directory", "key", "tables", "num_rows"}, "AccessCountsParams");
  key_ = parameter.text(root, "key");
  const std::vector<std::string> tables = parameter.texts(root, "tables");
  const std::vector<int64_t> num_rows = parameter.integers(root, "num_rows");
  if (num_rows.size() != tables.size()) parameter.fail("tables and num_rows differ in length");
  std::vector<size_t> first_row{0};
  for (const int64_t rows : num_rows) {
    if (rows < 0) parameter.fail("a table has a negative number of rows");
    first_row.push_back(first_row.back() + static_cast<size_t>(rows));
  }
  user_tables_.assign(tables.size(), false);
  for (const auto& feature : features) {
    const auto found = std::find(tables.begin(), tables.end(), feature.table);
    const size_t table = static_cast<size_t>(found - tables.begin());
    if (found == tables.end() || static_cast<size_t>(num_rows[table]) != feature.num_rows) {
      parameter.fail("table '" + feature.table + "' does not count " + std::to_string(feature.num_rows) +
                     " rows as routed");
    }
    column_base_.insert(column_base_.end(), feature.ids_per_sample, first_row[table]);
    if (feature.user_side) user_tables_[table] = true;
  }
  folder_ = private_server_folder(parameter.text(root, "directory"), "access");
  static std::atomic<uint64_t> opened{0};
  stem_ = folder_ + "/" + key_ + "." + model_name + "~" + std::to_string(opened.fetch_add(1)) + "." +
          std::to_string(::getpid());
  files_.push_back(SharedNpy::create(stem_ + kCountsSuffix, "<u4", first_row.back()));
  files_.push_back(SharedNpy::create(stem_ + kSamplesSuffix, "<i8", tables.size()));
  files_.push_back(SharedNpy::create(stem_ + kSinceSuffix, "<f8", 1));
  files_[2].values<double>()[0] = unix_now_s();
}

void AccessCounter::record(const int64_t* ids, size_t rows, size_t columns, bool ranking) {
  uint32_t* counts = files_[0].values<uint32_t>();
  for (size_t row = 0; row < rows; ++row) {
    const int64_t* row_ids = ids + row * columns;
    for (size_t column = 0; column < columns; ++column) {
      const int64_t id = row_ids[column];
      if (id < 0) continue;
      uint32_t& count = counts[column_base_[column] + static_cast<size_t>(id)];
      count += count != kMaxCount ? 1 : 0;
    }
  }
  int64_t* samples = files_[1].values<int64_t>();
  for (size_t table = 0; table < user_tables_.size(); ++table) {
    samples[table] += ranking ? (user_tables_[table] ? 1 : static_cast<int64_t>(rows) - 1) : static_cast<int64_t>(rows);
  }
}

void AccessCounter::retire() const {
  const std::string lock_path = folder_ + "/.retire.lock";
  const Descriptor lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (lock.get() < 0 || ::flock(lock.get(), LOCK_EX) != 0) fail("cannot lock", lock_path);
  const std::string retired = folder_ + "/" + key_ + "." + kRetired;
  const bool exists = ::access((retired + kCountsSuffix).c_str(), F_OK) == 0;
  const size_t rows = files_[0].elements();
  const size_t tables = files_[1].elements();
  const double since = files_[2].values<double>()[0];
  if (!exists) {
    SharedNpy::create(retired + kCountsSuffix, "<u4", rows);
    SharedNpy::create(retired + kSamplesSuffix, "<i8", tables);
    SharedNpy::create(retired + kSinceSuffix, "<f8", 1).values<double>()[0] = since;
  }
  const SharedNpy total = SharedNpy::open(retired + kCountsSuffix, "<u4");
  const SharedNpy seen = SharedNpy::open(retired + kSamplesSuffix, "<i8");
  const SharedNpy start = SharedNpy::open(retired + kSinceSuffix, "<f8");
  if (total.elements() != rows || seen.elements() != tables || start.elements() != 1) return;  // another build's
  const uint32_t* counts = files_[0].values<uint32_t>();
  for (size_t row = 0; row < rows; ++row) {
    const uint64_t sum = static_cast<uint64_t>(total.values<uint32_t>()[row]) + counts[row];
    total.values<uint32_t>()[row] = static_cast<uint32_t>(std::min<uint64_t>(sum, kMaxCount));
  }
  for (size_t table = 0; table < tables; ++table) seen.values<int64_t>()[table] += files_[1].values<int64_t>()[table];
  start.values<double>()[0] = std::min(start.values<double>()[0], since);
}

AccessCounter::~AccessCounter() {
  try {
    retire();
  } catch (const std::exception& error) {
    log(TRITONSERVER_LOG_WARN, std::string("access counts of a model could not be retired: ") + error.what());
  }
  for (const char* suffix : {kCountsSuffix, kSamplesSuffix, kSinceSuffix}) ::unlink((stem_ + suffix).c_str());
}

}  // namespace recgen
