#include "rows.h"

#include <algorithm>
#include <cstring>

#include "status.h"

namespace recgen {
namespace {

// IEEE 754 half to single precision (normal, subnormal, infinite and NaN values).
float half_to_float(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  uint32_t exponent = (half >> 10) & 0x1fu;
  uint32_t mantissa = half & 0x3ffu;
  uint32_t bits = 0;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa != 0) {  // subnormal: normalise
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
  } else {
    bits = sign;
  }
  float value = 0;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

const char* stored_descr(RowDtype dtype) {
  switch (dtype) {
    case RowDtype::kFp16:
      return "<f2";
    case RowDtype::kInt8:
      return "|u1";
    default:
      return "<f4";
  }
}

}  // namespace

RowDtype row_dtype_from_name(const std::string& name) {
  if (name == "fp32") return RowDtype::kFp32;
  if (name == "fp16") return RowDtype::kFp16;
  if (name == "int8") return RowDtype::kInt8;
  throw Error(TRITONSERVER_ERROR_INVALID_ARG, "row_dtype must be fp32, fp16 or int8, got '" + name + "'");
}

std::vector<GroupSlotColumns> read_slots(const JsonParameter& parameter, const rapidjson::Value& object) {
  std::vector<GroupSlotColumns> slots;
  for (const auto& slot : parameter.list(object, "slots").GetArray()) {
    parameter.expect_keys(slot, {"table", "columns"}, "GroupSlot");
    const rapidjson::Value& columns = parameter.member(slot, "columns");
    if (!columns.IsArray() || columns.Size() != 2 || !columns[0].IsUint64() || !columns[1].IsUint64()) {
      parameter.fail("a slot's columns are not [first, last]");
    }
    slots.push_back({parameter.text(slot, "table"), static_cast<size_t>(columns[0].GetUint64()),
                     static_cast<size_t>(columns[1].GetUint64())});
  }
  return slots;
}

GroupRows::GroupRows(const std::string& version_dir, const std::vector<GroupMemberFiles>& members,
                     const std::vector<GroupSlotColumns>& slots, RowDtype dtype, size_t input_width)
    : GroupRows(dtype, input_width) {
  std::vector<std::string> member_tables;
  std::vector<size_t> member_stacks;
  for (const auto& member : members) {
    member_stacks.push_back(
        add_member(version_dir + "/" + member.rows_file, version_dir + "/" + member.scales_file, member.scales_file));
    member_tables.push_back(member.table);
  }
  for (const auto& slot : slots) {
    const auto member = std::find(member_tables.begin(), member_tables.end(), slot.table);
    if (member == member_tables.end()) {
      throw Error(TRITONSERVER_ERROR_INVALID_ARG, "slot of table '" + slot.table + "' has no member shard");
    }
    add_slot(member_stacks[static_cast<size_t>(member - member_tables.begin())], slot);
  }
}

GroupRows GroupRows::from_stacks(const std::string& rows_dir, const std::vector<std::string>& stack_files,
                                 const std::vector<std::string>& scale_files,
                                 const std::vector<GroupSlotColumns>& slots, const std::vector<size_t>& slot_stacks,
                                 RowDtype dtype, size_t input_width) {
  GroupRows rows(dtype, input_width);
  if (dtype == RowDtype::kInt8 ? scale_files.size() != stack_files.size() : !scale_files.empty()) {
    throw Error(TRITONSERVER_ERROR_INVALID_ARG, "a pooled group has " + std::to_string(stack_files.size()) +
                                                    " stacks and " + std::to_string(scale_files.size()) +
                                                    " scales files");
  }
  for (size_t index = 0; index < stack_files.size(); ++index) {
    const std::string scales = scale_files.empty() ? "" : scale_files[index];
    if (rows.add_member(rows_dir + "/" + stack_files[index], rows_dir + "/" + scales, scales) != index) {
      throw Error(TRITONSERVER_ERROR_INVALID_ARG, stack_files[index] + ": two stacks of a group hold one row width");
    }
  }
  if (slot_stacks.size() != slots.size()) {
    throw Error(TRITONSERVER_ERROR_INVALID_ARG, "a pooled group names a stack for " +
                                                    std::to_string(slot_stacks.size()) + " of its " +
                                                    std::to_string(slots.size()) + " slots");
  }
  for (size_t index = 0; index < slots.size(); ++index) {
    if (slot_stacks[index] >= rows.stacks_.size()) {
      throw Error(TRITONSERVER_ERROR_INVALID_ARG, "slot of table '" + slots[index].table + "' pools stack " +
                                                      std::to_string(slot_stacks[index]) + " of " +
                                                      std::to_string(rows.stacks_.size()));
    }
    rows.add_slot(slot_stacks[index], slots[index]);
  }
  return rows;
}

size_t GroupRows::add_member(const std::string& rows_path, const std::string& scales_path, const std::string& name) {
  rows_.emplace_back(rows_path, stored_descr(dtype_));
  if (dtype_ == RowDtype::kInt8) {
    scales_.emplace_back(scales_path, "<f4");
    if (scales_.back().columns() != 2 || scales_.back().rows() != rows_.back().rows()) {
      throw Error(TRITONSERVER_ERROR_INVALID_ARG,
                  name + ": expected [" + std::to_string(rows_.back().rows()) + ", 2] (scale, offset)");
    }
  }
  const size_t width = rows_.back().columns();
  auto stack = std::find_if(stacks_.begin(), stacks_.end(), [&](const Stack& s) { return s.width == width; });
  if (stack == stacks_.end()) {
    stacks_.push_back(Stack{width, {}, {0}, {}});
    stack = stacks_.end() - 1;
  }
  stack->members.push_back(rows_.size() - 1);
  stack->first_rows.push_back(stack->first_rows.back() + rows_.back().rows());
  return static_cast<size_t>(stack - stacks_.begin());
}

void GroupRows::add_slot(size_t stack, const GroupSlotColumns& slot) {
  if (slot.first > slot.last || slot.last > input_width_) {
    throw Error(TRITONSERVER_ERROR_INVALID_ARG, "slot of table '" + slot.table + "': columns [" +
                                                    std::to_string(slot.first) + ", " + std::to_string(slot.last) +
                                                    ") outside the input's " + std::to_string(input_width_));
  }
  for (size_t column = slot.first; column < slot.last; ++column) stacks_[stack].columns.push_back(column);
  slots_.push_back(Slot{stack, slot.first, slot.last, output_width_});
  output_width_ += stacks_[stack].width;
}

void GroupRows::touch() const {
  for (const auto& matrix : rows_) matrix.touch();
  for (const auto& matrix : scales_) matrix.touch();
}

void GroupRows::advise_random() const {
  for (const auto& matrix : rows_) matrix.advise_random();
  for (const auto& matrix : scales_) matrix.advise_random();
}

std::string GroupRows::invalid_id(const int32_t* ids, size_t batch) const {
  for (const auto& stack : stacks_) {
    const int64_t rows = static_cast<int64_t>(stack.first_rows.back());
    for (size_t sample = 0; sample < batch; ++sample) {
      for (const size_t column : stack.columns) {
        const int64_t id = ids[sample * input_width_ + column];
        if (id < -1 || id >= rows) {
          return "row id " + std::to_string(id) + " is outside the " + std::to_string(rows) +
                 " rows this step holds (valid: -1 to " + std::to_string(rows - 1) + ")";
        }
      }
    }
  }
  return "";
}

GroupRows::RowRef GroupRows::locate(const Stack& stack, size_t row) const {
  size_t index = 0;
  if (stack.members.size() > 1) {  // the member holding stacked row `row`: the last whose first row is not past it
    index = static_cast<size_t>(std::upper_bound(stack.first_rows.begin(), stack.first_rows.end(), row) -
                                stack.first_rows.begin()) - 1;
  }
  return RowRef{stack.members[index], row - stack.first_rows[index]};
}

void GroupRows::add_row(size_t width, RowRef where, float weight, float* __restrict__ accumulator) const {
  const uint8_t* values = rows_[where.member].row(where.row);
  if (dtype_ == RowDtype::kFp32) {
    const float* __restrict__ row_values = reinterpret_cast<const float*>(values);
    for (size_t d = 0; d < width; ++d) accumulator[d] += weight * row_values[d];
  } else if (dtype_ == RowDtype::kFp16) {
    const uint16_t* __restrict__ halves = reinterpret_cast<const uint16_t*>(values);
    for (size_t d = 0; d < width; ++d) accumulator[d] += weight * half_to_float(halves[d]);
  } else {
    const float* pair = reinterpret_cast<const float*>(scales_[where.member].row(where.row));
    for (size_t d = 0; d < width; ++d) {
      accumulator[d] += weight * (static_cast<float>(values[d]) * pair[0] + pair[1]);
    }
  }
}

void GroupRows::pool(const int32_t* ids, const float* weights, size_t batch, float* out) const {
  std::fill(out, out + batch * output_width_, 0.0f);
  // Rows are read at random: each row is asked for a few rows ahead of its use, so the cache misses overlap.
  constexpr size_t kAhead = 8;
  struct Pending {
    RowRef where;
    size_t width;
    float weight;
    float* accumulator;
  };
  Pending ring[kAhead] = {};
  size_t queued = 0;
  for (size_t sample = 0; sample < batch; ++sample) {
    for (const auto& slot : slots_) {
      const Stack& stack = stacks_[slot.stack];
      float* accumulator = out + sample * output_width_ + slot.output_offset;
      for (size_t column = slot.first; column < slot.last; ++column) {
        const int32_t id = ids[sample * input_width_ + column];
        if (id < 0) continue;  // -1: the padding row, zeros
        const RowRef where = locate(stack, static_cast<size_t>(id));
        __builtin_prefetch(rows_[where.member].row(where.row));
        Pending& next = ring[queued % kAhead];
        if (queued >= kAhead) add_row(next.width, next.where, next.weight, next.accumulator);
        next = Pending{where, stack.width, weights == nullptr ? 1.0f : weights[sample * input_width_ + column],
                       accumulator};
        ++queued;
      }
    }
  }
  for (size_t done = queued > kAhead ? queued - kAhead : 0; done < queued; ++done) {
    const Pending& job = ring[done % kAhead];
    add_row(job.width, job.where, job.weight, job.accumulator);
  }
}

}  // namespace recgen
