// A shard group's rows and their pooling: the member shards' rows files, mapped once per model, stacked per row
// width in member order (each stack ends in a zero padding row that -1 ids gather), and every slot's pool of its
// block of packed-id columns. The native twin of recgen_pooling.py, whose numpy kernels are the reference.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "npy.h"
#include "params.h"

namespace recgen {

enum class RowDtype { kFp32, kFp16, kInt8 };

// "fp32", "fp16" or "int8" (int8 row-wise: uint8 codes and an FP32 (scale, offset) per row); Error otherwise.
RowDtype row_dtype_from_name(const std::string& name);

struct GroupMemberFiles {
  std::string table;
  std::string rows_file;    // relative to the model's version directory
  std::string scales_file;  // int8 only
};

struct GroupSlotColumns {
  std::string table;
  size_t first = 0;  // [first, last) packed-id columns
  size_t last = 0;
};

// The `slots` list (recgen_params.GroupSlot: table, [first, last) columns) of `object`.
std::vector<GroupSlotColumns> read_slots(const JsonParameter& parameter, const rapidjson::Value& object);

class GroupRows {
 public:
  // Maps every member's files from `version_dir` and stacks them per row width (a shard-group model's rows);
  // Error naming the file or slot that does not fit.
  GroupRows(const std::string& version_dir, const std::vector<GroupMemberFiles>& members,
            const std::vector<GroupSlotColumns>& slots, RowDtype dtype, size_t input_width);
  // Rows already stacked per width by the build, each file a stack ending in its padding row (the groups a fused
  // router pools): slot i pools from stack `slot_stacks[i]`.
  static GroupRows from_stacks(const std::string& rows_dir, const std::vector<std::string>& stack_files,
                               const std::vector<std::string>& scale_files,
                               const std::vector<GroupSlotColumns>& slots, const std::vector<size_t>& slot_stacks,
                               RowDtype dtype, size_t input_width);

  // Columns of the pooled output: per slot, its table's row width.
  size_t output_width() const { return output_width_; }
  // Reads every page of the rows once, so that no request pays for a first read.
  void touch() const;
  // Leaves every page of the rows on disk until a request reads it (paged rows).
  void advise_random() const;
  // The first id, in the reference's order, that is not -1 nor a row of its stack: "row id X is outside ...";
  // empty when every id is valid.
  std::string invalid_id(const int32_t* ids, size_t batch) const;
  // Pools [batch, input_width] row ids (and their weights, or null) into out [batch, output_width]; the ids must
  // have passed invalid_id.
  void pool(const int32_t* ids, const float* weights, size_t batch, float* out) const;

 private:
  struct Stack {
    size_t width = 0;
    std::vector<size_t> members;     // indexes into rows_ (and scales_), in member order
    std::vector<size_t> first_rows;  // each member's first stacked row, then the total
    std::vector<size_t> columns;     // the input columns of this stack's slots, in slot order
  };
  struct Slot {
    size_t stack = 0;
    size_t first = 0;
    size_t last = 0;
    size_t output_offset = 0;
  };
  GroupRows(RowDtype dtype, size_t input_width) : dtype_(dtype), input_width_(input_width) {}
  // Maps one member's rows (and int8 scales) and returns the stack of its width (a new one if none has it yet).
  size_t add_member(const std::string& rows_path, const std::string& scales_path, const std::string& name);
  // Adds a slot pooling columns [first, last) from `stack`; Error when they lie outside the input.
  void add_slot(size_t stack, const GroupSlotColumns& slot);
  // A stored row: its member's index and its row within that member.
  struct RowRef {
    size_t member = 0;
    size_t row = 0;
  };
  // Where stacked row `row` of `stack` (not the padding row) is stored.
  RowRef locate(const Stack& stack, size_t row) const;
  // Adds weight x the `width` values of row `where`, read back as FP32, to `accumulator`.
  void add_row(size_t width, RowRef where, float weight, float* accumulator) const;

  RowDtype dtype_;
  size_t input_width_;
  size_t output_width_ = 0;
  std::vector<NpyMatrix> rows_;
  std::vector<NpyMatrix> scales_;
  std::vector<Stack> stacks_;
  std::vector<Slot> slots_;
};

}  // namespace recgen
