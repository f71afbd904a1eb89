// The routers' access counters, natively: the same files recgen_access.py writes, so the profile model,
// `recgen profile --from-server` and drift read a native router's counts like a Python one's.
//
// Each instance of a native router counts into its own files,
// `<directory>/recgen-<uid>/access/<server pid>/<key>.<model>~<n>.<server pid>.*` (`counts.npy` uint32 per row of
// every table, `samples.npy` int64 per table, `since.npy` the window's start in Unix seconds), as each Python
// router instance does, so one writer adds to them without atomic operations; a count stops at 2**32 - 1. `n`
// numbers the counter sets this server process has opened, so a reloaded model never shares its predecessor's
// files. When the model is unloaded its counts are added to the key's retired set and its files removed, as the
// Python routers' are when their stub is gone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "params.h"

namespace recgen {

// A .npy file of one 1-D array mapped read-write and shared (writes reach every process that maps it).
class SharedNpy {
 public:
  // Creates (or truncates) `path` as a zeroed array of `elements` values of `descr` ('<u4', '<i8', '<f8').
  static SharedNpy create(const std::string& path, const std::string& descr, size_t elements);
  // Maps an existing file; Error unless it is a 1-D array of `descr`.
  static SharedNpy open(const std::string& path, const std::string& descr);
  ~SharedNpy();
  SharedNpy(SharedNpy&& other) noexcept;
  SharedNpy& operator=(SharedNpy&&) = delete;
  SharedNpy(const SharedNpy&) = delete;
  SharedNpy& operator=(const SharedNpy&) = delete;

  size_t elements() const { return elements_; }
  template <typename T>
  T* values() const {
    return reinterpret_cast<T*>(values_);
  }

 private:
  SharedNpy() = default;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  uint8_t* values_ = nullptr;
  size_t elements_ = 0;
};

struct CountedFeature {
  std::string table;
  size_t ids_per_sample = 0;
  bool user_side = false;
  size_t num_rows = 0;  // the rows the router lets its ids reach
};

class AccessCounter {
 public:
  // Creates one instance's zeroed counters from the `access_counts` parameter (recgen_params.AccessCountsParams);
  // Error when a routed feature's table is not counted with its rows, or the folder is not private.
  AccessCounter(const JsonParameter& parameter, const std::string& model_name,
                const std::vector<CountedFeature>& features);
  // Retires the counts into the key's retired set and removes this instance's files.
  ~AccessCounter();
  AccessCounter(const AccessCounter&) = delete;
  AccessCounter& operator=(const AccessCounter&) = delete;

  // Counts [rows, columns] original ids (-1 = none, each valid for its feature) and the samples: a ranking batch is
  // one user row and rows - 1 candidates, so user tables see one sample and the others rows - 1.
  void record(const int64_t* ids, size_t rows, size_t columns, bool ranking);

 private:
  void retire() const;

  std::string folder_;
  std::string key_;
  std::string stem_;
  std::vector<SharedNpy> files_;  // counts, samples, since
  std::vector<size_t> column_base_;
  std::vector<bool> user_tables_;
};

// `<base>/recgen-<uid>/<kind>/<this process>`, each level created 0700 if missing and checked to be a real folder
// owned by this user and closed to others (recgen_runtime.server_folder, seen from the server process itself).
std::string private_server_folder(const std::string& base, const std::string& kind);

}  // namespace recgen
