#include "router_step.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

#include "access_counts.h"
#include "admission.h"
#include "npy.h"
#include "params.h"
#include "rows.h"
#include "status.h"

namespace recgen {
namespace {

[[noreturn]] void bad_request(const std::string& message) { throw Error(TRITONSERVER_ERROR_INVALID_ARG, message); }

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t index = 0; index < shape.size(); ++index) text += (index ? ", " : "") + std::to_string(shape[index]);
  return text + "]";
}

// One routed feature (recgen_params.RoutedTable) and what the router maps for it.
struct Feature {
  std::string table;
  std::string input;
  bool user_side = false;
  size_t cached_rows = 0;
  size_t num_rows = 0;
  size_t ids_per_sample = 0;
  std::vector<size_t> boundaries;     // shard starts in rank space, then num_rows
  std::vector<size_t> shard_outputs;  // per shard: its packed output
  std::vector<size_t> shard_columns;  // per shard: its block's first column in that output
  std::vector<int64_t> shard_shifts;  // per shard: its first row in the group minus its first rank
  bool counted = false;
  std::string weights_input;
  int64_t padding_id = -1;
  std::optional<NpyMatrix> ranks;  // [num_rows] int32 or int64 hotness ranks (permuted tables)
  std::optional<NpyMatrix> cache;  // [cached_rows, dim] FP32 rows of the hottest ranks
  size_t first_column = 0;         // in the side-by-side ids of all features
};

struct PackedOutput {
  TensorSpec ids;
  size_t width = 0;
  std::optional<TensorSpec> weights;
  int pooled_by = -1;  // the pooled group that consumes it, or -1: it is an output of the router
};

struct PooledGroup {
  std::string weights;
  TensorSpec output;
  std::unique_ptr<GroupRows> rows;
};

// What one request's ids become: side by side [rows, columns] (-1 = none), with every id's weight.
struct Batch {
  size_t rows = 0;
  size_t columns = 0;
  std::vector<int64_t> ids;
  std::vector<float> weights;  // empty when no feature is weighted
};

// Every buffer a request needs (an instance thread keeps one and reuses it).
struct Scratch {
  Batch batch;
  std::vector<float> counts;
  std::vector<float> cached;
  std::vector<std::vector<int32_t>> packed;
  std::vector<std::vector<float>> packed_weights;
};

class RouterStep : public Step {
 public:
  RouterStep(const ModelConfig& config, const std::string& version_dir, TRITONSERVER_Server* server)
      : ranking_(config.parameters.count("ranking_router") != 0) {
    read_routing(config, version_dir);
    if (config.parameters.count("request_checks")) {
      const JsonParameter checks(config, "request_checks");
      checks.expect_keys(checks.root(), {"finite_inputs"}, "RequestChecksParams");
      for (const auto& name : checks.texts(checks.root(), "finite_inputs")) {
        const TensorSpec& spec = tensor_spec(checks, config.inputs, name, "input");
        if (spec.datatype != TRITONSERVER_TYPE_FP32) checks.fail("input '" + name + "' is not FP32");
        finite_inputs_.push_back(name);
      }
    }
    if (ranking_) {
      const JsonParameter ranking(config, "ranking_router");
      ranking.expect_keys(ranking.root(), {"max_rows"}, "RankingRouterParams");
      max_rows_ = ranking.count(ranking.root(), "max_rows");
    }
    read_front_cache(config, version_dir);
    if (config.parameters.count("router_pooling")) read_pooling(config, version_dir);
    resolve_outputs(config);
    if (config.parameters.count("access_counts")) {
      access_counts_ = std::make_unique<JsonParameter>(config, "access_counts");
      model_name_ = config.name;  // each instance's counters are created, and the parameter checked, by add_instance
    }
    if (config.parameters.count("admission")) {
      admission_ = std::make_unique<Admission>(JsonParameter(config, "admission"), config.name, server);
    }
    if (!cache_output_.empty() && server != nullptr) {
      cache_lookups_ = std::make_unique<CounterMetric>("recgen_front_cache_lookups_total",
                                                       "ids of front-cached tables the router saw", "model", config.name);
      cache_hits_ = std::make_unique<CounterMetric>(
          "recgen_front_cache_hits_total", "of those, ids the router's front cache pooled itself", "model", config.name);
    }
  }

  std::string shed_message() const override { return admission_ ? admission_->shed_message() : ""; }

  // Each instance counts into its own files (as each Python router instance does), so it adds without atomics.
  // Triton initializes every instance before the model serves, so `counters_` does not grow while it is read.
  size_t add_instance() override {
    if (access_counts_) counters_.push_back(std::make_unique<AccessCounter>(*access_counts_, model_name_, counted_features()));
    return instances_++;
  }

  uint64_t batch_size(const RequestInputs& inputs) const override {
    if (ranking_) return 1;
    const InputTensor& ids = inputs.get(features_.front().input);
    return ids.shape.empty() ? 1 : static_cast<uint64_t>(std::max<int64_t>(ids.shape[0], 0));
  }

  void execute(const RequestInputs& inputs, const std::vector<std::string>& outputs,
               TRITONBACKEND_Response* response, size_t instance) const override {
    for (const auto& name : finite_inputs_) check_finite(inputs.get(name));
    // Per-request buffers, kept by the instance's thread from one request to the next (no allocation once warm).
    thread_local Scratch scratch;
    Batch& batch = scratch.batch;
    if (ranking_) {
      combine_ranking(inputs, batch);
    } else {
      side_by_side(inputs, batch);
    }
    drop_padding(batch);
    const std::vector<float>& counts = count_pooled(batch, scratch.counts);
    if (!counters_.empty()) counters_.at(instance)->record(batch.ids.data(), batch.rows, batch.columns, ranking_);
    to_ranks(batch);
    const std::vector<float>& cached = front_cache(batch, scratch.cached);
    std::vector<std::vector<int32_t>>& packed = scratch.packed;
    std::vector<std::vector<float>>& packed_weights = scratch.packed_weights;
    route(batch, &packed, &packed_weights);
    const auto wanted = [&outputs](const std::string& name) {
      return std::find(outputs.begin(), outputs.end(), name) != outputs.end();
    };
    const int64_t rows = static_cast<int64_t>(batch.rows);
    for (size_t index = 0; index < outputs_.size(); ++index) {
      const PackedOutput& output = outputs_[index];
      if (output.pooled_by >= 0) {
        const PooledGroup& group = groups_[static_cast<size_t>(output.pooled_by)];
        if (!wanted(group.output.name)) continue;
        const std::string invalid = group.rows->invalid_id(packed[index].data(), batch.rows);
        if (!invalid.empty()) throw Error(TRITONSERVER_ERROR_INTERNAL, "pooled group '" + group.output.name + "': " + invalid);
        size_t bytes = 0;
        float* out = reinterpret_cast<float*>(add_output(
            response, group.output, {rows, static_cast<int64_t>(group.rows->output_width())}, &bytes));
        group.rows->pool(packed[index].data(), group.weights.empty() ? nullptr : packed_weights[index].data(),
                         batch.rows, out);
        continue;
      }
      if (wanted(output.ids.name)) copy_out(response, output.ids, rows, output.width, packed[index].data());
      if (output.weights && wanted(output.weights->name)) {
        copy_out(response, *output.weights, rows, output.width, packed_weights[index].data());
      }
    }
    if (!cache_output_.empty() && wanted(cache_output_)) {
      copy_out(response, cache_spec_, rows, cache_width_, cached.data());
    }
    if (!counts_output_.empty() && wanted(counts_output_)) {
      copy_out(response, counts_spec_, rows, counted_.size(), counts.data());
    }
  }

 private:
  std::vector<CountedFeature> counted_features() const {
    std::vector<CountedFeature> counted;
    for (const auto& feature : features_) {
      counted.push_back({feature.table, feature.ids_per_sample, feature.user_side, feature.num_rows});
    }
    return counted;
  }

  void read_routing(const ModelConfig& config, const std::string& version_dir) {
    const JsonParameter routing(config, "routing");
    const rapidjson::Value& root = routing.root();
    routing.expect_keys(root, {"tables", "outputs", "counts_output"}, "RoutingParams");
    for (const auto& entry : routing.list(root, "outputs").GetArray()) {
      routing.expect_keys(entry, {"name", "width", "weights"}, "PackedOutput");
      PackedOutput output;
      output.width = routing.count(entry, "width");
      output.ids = TensorSpec{routing.text(entry, "name"), TRITONSERVER_TYPE_INT32, {}};
      const std::string weights = routing.text(entry, "weights");
      if (!weights.empty()) output.weights = TensorSpec{weights, TRITONSERVER_TYPE_FP32, {}};
      outputs_.push_back(std::move(output));
    }
    size_t column = 0;
    for (const auto& entry : routing.list(root, "tables").GetArray()) {
      routing.expect_keys(entry, {"table", "input", "side", "cached_rows", "num_rows", "ids_per_sample", "boundaries",
                                  "shards", "permuted", "counted", "weights_input", "padding_id"},
                          "RoutedTable");
      Feature feature;
      feature.table = routing.text(entry, "table");
      feature.input = routing.text(entry, "input");
      const std::string side = routing.text(entry, "side");
      if (side != "user" && side != "item") routing.fail("table '" + feature.table + "': side must be user or item");
      feature.user_side = side == "user";
      feature.cached_rows = routing.count(entry, "cached_rows");
      feature.num_rows = routing.count(entry, "num_rows");
      feature.ids_per_sample = routing.count(entry, "ids_per_sample");
      feature.counted = routing.boolean(entry, "counted");
      feature.weights_input = routing.text(entry, "weights_input");
      feature.padding_id = routing.integer(entry, "padding_id");
      for (const int64_t bound : routing.integers(entry, "boundaries")) {
        if (bound < 0 || (!feature.boundaries.empty() && static_cast<size_t>(bound) < feature.boundaries.back())) {
          routing.fail("table '" + feature.table + "': shard boundaries must rise from 0");
        }
        feature.boundaries.push_back(static_cast<size_t>(bound));
      }
      const rapidjson::Value& shards = routing.list(entry, "shards");
      if (feature.boundaries.empty() || feature.boundaries.front() != 0 ||
          feature.boundaries.back() != feature.num_rows || shards.Size() + 1 != feature.boundaries.size()) {
        std::string listed;
        for (const size_t bound : feature.boundaries) listed += (listed.empty() ? "" : ", ") + std::to_string(bound);
        routing.fail("table '" + feature.table + "': num_rows " + std::to_string(feature.num_rows) +
                     " and shard boundaries [" + listed + "] disagree");
      }
      for (rapidjson::SizeType shard = 0; shard < shards.Size(); ++shard) {
        routing.expect_keys(shards[shard], {"output", "column", "first_row"}, "ShardTarget");
        const size_t output = routing.count(shards[shard], "output");
        const size_t first = routing.count(shards[shard], "column");
        if (output >= outputs_.size() || first + feature.ids_per_sample > outputs_[output].width) {
          routing.fail("table '" + feature.table + "': a shard's columns lie outside its output");
        }
        feature.shard_outputs.push_back(output);
        feature.shard_columns.push_back(first);
        feature.shard_shifts.push_back(routing.integer(shards[shard], "first_row") -
                                       static_cast<int64_t>(feature.boundaries[shard]));
      }
      const std::string ranks_path = version_dir + "/row_ranks__" + feature.table + ".npy";
      if (routing.boolean(entry, "permuted")) {
        feature.ranks.emplace(ranks_path, std::initializer_list<const char*>{"<i4", "<i8"}, NpyShape::kVector);
        if (feature.ranks->rows() != feature.num_rows) {
          routing.fail("table '" + feature.table + "': " + ranks_path + " does not hold " +
                       std::to_string(feature.num_rows) + " ranks");
        }
        check_ranks(routing, feature);
      }
      feature.first_column = column;
      column += feature.ids_per_sample;
      const TensorSpec& ids = tensor_spec(routing, config.inputs, feature.input, "input");
      if (ids.datatype != TRITONSERVER_TYPE_INT64 || ids.dims.empty() ||
          ids.dims.back() != static_cast<int64_t>(feature.ids_per_sample)) {
        routing.fail("input '" + feature.input + "' must be INT64 [..., " + std::to_string(feature.ids_per_sample) + "]");
      }
      if (!feature.weights_input.empty()) tensor_spec(routing, config.inputs, feature.weights_input, "weights input");
      weighted_ = weighted_ || !feature.weights_input.empty();
      features_.push_back(std::move(feature));
    }
    if (features_.empty()) routing.fail("routes no table");
    columns_ = column;
    for (size_t index = 0; index < features_.size(); ++index) {
      if (features_[index].counted) counted_.push_back(index);
    }
    counts_output_ = routing.text(root, "counts_output");
    if (counted_.empty() != counts_output_.empty()) {
      routing.fail("counts_output '" + counts_output_ + "' vs " + std::to_string(counted_.size()) + " counted features");
    }
    if (!counts_output_.empty()) counts_spec_ = tensor_spec(routing, config.outputs, counts_output_, "output");
  }

  // The routed outputs no pooled group consumes are the router's own: they must be in the config.
  // Every output's type and width are checked against the config too: the responses are shaped from the routing.
  void resolve_outputs(const ModelConfig& config) {
    const JsonParameter routing(config, "routing");
    for (auto& output : outputs_) {
      if (output.pooled_by >= 0) continue;
      output.ids = tensor_spec(routing, config.outputs, output.ids.name, "output");
      expect_output(routing, output.ids, TRITONSERVER_TYPE_INT32, output.width);
      if (output.weights) {
        output.weights = tensor_spec(routing, config.outputs, output.weights->name, "output");
        expect_output(routing, *output.weights, TRITONSERVER_TYPE_FP32, output.width);
      }
    }
    if (!counts_output_.empty()) expect_output(routing, counts_spec_, TRITONSERVER_TYPE_FP32, counted_.size());
    if (!cache_output_.empty()) expect_output(routing, cache_spec_, TRITONSERVER_TYPE_FP32, cache_width_);
  }

  static void expect_output(const JsonParameter& parameter, const TensorSpec& spec, TRITONSERVER_DataType datatype,
                            size_t width) {
    if (spec.datatype != datatype || spec.dims.empty() || spec.dims.back() != static_cast<int64_t>(width)) {
      parameter.fail("output '" + spec.name + "' must be " + (datatype == TRITONSERVER_TYPE_INT32 ? "INT32" : "FP32") +
                     " [..., " + std::to_string(width) + "] as routed");
    }
  }

  // Every rank of a permuted table lies in [0, num_rows): a rank is an index the routing trusts.
  static void check_ranks(const JsonParameter& routing, const Feature& feature) {
    for (size_t row = 0; row < feature.num_rows; ++row) {
      const int64_t rank = rank_of(feature, row);
      if (rank < 0 || static_cast<size_t>(rank) >= feature.num_rows) {
        routing.fail("table '" + feature.table + "': rank " + std::to_string(rank) + " of row " + std::to_string(row) +
                     " is outside its rows");
      }
    }
  }

  static int64_t rank_of(const Feature& feature, size_t row) {
    const uint8_t* at = feature.ranks->row(row);
    if (feature.ranks->descr() == "<i4") {
      int32_t value = 0;
      std::memcpy(&value, at, sizeof value);
      return value;
    }
    int64_t value = 0;
    std::memcpy(&value, at, sizeof value);
    return value;
  }

  void read_front_cache(const ModelConfig& config, const std::string& version_dir) {
    std::vector<std::string> cached;
    for (const auto& feature : features_) {
      if (feature.cached_rows) cached.push_back(feature.table);
    }
    if (!config.parameters.count("front_cache")) {
      if (!cached.empty()) throw Error(TRITONSERVER_ERROR_INVALID_ARG, "tables have cached_rows but no front_cache");
      return;
    }
    const JsonParameter cache(config, "front_cache");
    cache.expect_keys(cache.root(), {"output", "tables"}, "FrontCacheParams");
    if (cache.texts(cache.root(), "tables") != cached) cache.fail("tables disagree with the tables' cached_rows");
    cache_output_ = cache.text(cache.root(), "output");
    cache_spec_ = tensor_spec(cache, config.outputs, cache_output_, "output");
    for (auto& feature : features_) {
      if (!feature.cached_rows) continue;
      const std::string path = version_dir + "/front_cache__" + feature.table + ".npy";
      feature.cache.emplace(path, "<f4");
      if (feature.cache->rows() != feature.cached_rows) {
        cache.fail(path + " does not hold " + std::to_string(feature.cached_rows) + " rows");
      }
      feature.cache->touch();
      cache_width_ += feature.cache->columns();
    }
  }

  void read_pooling(const ModelConfig& config, const std::string& version_dir) {
    const JsonParameter pooling(config, "router_pooling");
    const rapidjson::Value& root = pooling.root();
    pooling.expect_keys(root, {"rows_model", "groups"}, "RouterPoolingParams");
    // The rows model is a sibling of this model, at the same version: <repository>/<rows_model>/<version>.
    const size_t version_slash = version_dir.find_last_of('/');
    const size_t model_slash = version_dir.find_last_of('/', version_slash - 1);
    const std::string rows_dir = version_dir.substr(0, model_slash + 1) + pooling.text(root, "rows_model") +
                                 version_dir.substr(version_slash);
    for (const auto& entry : pooling.list(root, "groups").GetArray()) {
      pooling.expect_keys(entry, {"ids", "weights", "output", "stack_files", "slots", "slot_stacks", "row_dtype",
                                  "scale_files", "fault_in"},
                          "PooledGroup");
      const std::string ids = pooling.text(entry, "ids");
      const auto output = std::find_if(outputs_.begin(), outputs_.end(),
                                       [&](const PackedOutput& packed) { return packed.ids.name == ids; });
      if (output == outputs_.end() || output->pooled_by >= 0) pooling.fail("group ids '" + ids + "' are not routed once");
      PooledGroup group;
      group.weights = pooling.text(entry, "weights");
      if (group.weights != (output->weights ? output->weights->name : "")) {
        pooling.fail("group '" + ids + "': weights '" + group.weights + "' are not its ids' weights");
      }
      std::vector<size_t> slot_stacks;
      for (const int64_t stack : pooling.integers(entry, "slot_stacks")) {
        if (stack < 0) pooling.fail("a negative slot stack");
        slot_stacks.push_back(static_cast<size_t>(stack));
      }
      group.rows = std::make_unique<GroupRows>(GroupRows::from_stacks(
          rows_dir, pooling.texts(entry, "stack_files"), pooling.texts(entry, "scale_files"),
          read_slots(pooling, entry), slot_stacks, row_dtype_from_name(pooling.text(entry, "row_dtype")),
          output->width));
      if (pooling.boolean(entry, "fault_in")) {
        group.rows->touch();
      } else {
        group.rows->advise_random();  // paged: a page comes into memory when a request reads it
      }
      group.output = tensor_spec(pooling, config.outputs, pooling.text(entry, "output"), "output");
      if (group.output.datatype != TRITONSERVER_TYPE_FP32 || group.output.dims.empty() ||
          group.output.dims.back() != static_cast<int64_t>(group.rows->output_width())) {
        pooling.fail("output '" + group.output.name + "' must be FP32 [..., " +
                     std::to_string(group.rows->output_width()) + "]");
      }
      output->pooled_by = static_cast<int>(groups_.size());
      groups_.push_back(std::move(group));
    }
  }

  // INVALID_ARG naming the first non-finite value of an FP32 input and where it is (recgen_kernels.check_finite).
  static void check_finite(const InputTensor& input) {
    if (input.datatype != TRITONSERVER_TYPE_FP32) bad_request("input '" + input.name + "' must be FP32");
    const float* values = reinterpret_cast<const float*>(input.data);
    const size_t count = input.elements();
    for (size_t index = 0; index < count; ++index) {
      if (std::isfinite(values[index])) continue;
      std::vector<int64_t> where(input.shape.size());
      size_t rest = index;
      for (size_t dim = input.shape.size(); dim-- > 0;) {
        where[dim] = static_cast<int64_t>(rest % static_cast<size_t>(input.shape[dim]));
        rest /= static_cast<size_t>(input.shape[dim]);
      }
      const std::string value = std::isnan(values[index]) ? "nan" : (values[index] > 0 ? "inf" : "-inf");
      bad_request("input '" + input.name + "' holds a non-finite value (" + value + ") at " + shape_text(where) +
                  "; dense features and weights must be finite (a model built with --allow-non-finite passes them on)");
    }
  }

  const InputTensor& ids_of(const RequestInputs& inputs, const Feature& feature) const {
    const InputTensor& ids = inputs.get(feature.input);
    if (ids.datatype != TRITONSERVER_TYPE_INT64 || ids.shape.size() != 2 ||
        ids.shape[1] != static_cast<int64_t>(feature.ids_per_sample)) {
      bad_request("input '" + feature.input + "' must be INT64 [rows, " + std::to_string(feature.ids_per_sample) + "]");
    }
    return ids;
  }

  // A weights tensor of `feature`, checked FP32 and shaped like its ids `ids`.
  static const float* weights_of(const RequestInputs& inputs, const Feature& feature, const std::vector<int64_t>& ids) {
    const InputTensor& given = inputs.get(feature.weights_input);
    if (given.datatype != TRITONSERVER_TYPE_FP32) bad_request("input '" + given.name + "' must be FP32");
    if (given.shape != ids) {
      bad_request("input '" + given.name + "' is shaped " + shape_text(given.shape) + "; it must match '" +
                  feature.input + "' " + shape_text(ids) + " (one weight per id)");
    }
    return reinterpret_cast<const float*>(given.data);
  }

  // Copies `source` rows [0, rows_of_source) of a feature's [*, ids_per_sample] tensor into the batch at `first_row`.
  template <typename T, typename Target>
  static void place(const T* source, size_t source_rows, const Feature& feature, size_t first_row, size_t columns,
                    Target* target) {
    for (size_t row = 0; row < source_rows; ++row) {
      for (size_t j = 0; j < feature.ids_per_sample; ++j) {
        target[(first_row + row) * columns + feature.first_column + j] =
            static_cast<Target>(source[row * feature.ids_per_sample + j]);
      }
    }
  }

  void side_by_side(const RequestInputs& inputs, Batch& batch) const {
    batch.columns = columns_;
    batch.rows = static_cast<size_t>(ids_of(inputs, features_.front()).shape[0]);
    batch.ids.assign(batch.rows * columns_, -1);
    if (weighted_) {
      batch.weights.assign(batch.rows * columns_, 1.0f);
    } else {
      batch.weights.clear();
    }
    for (const auto& feature : features_) {
      const InputTensor& ids = ids_of(inputs, feature);
      if (static_cast<size_t>(ids.shape[0]) != batch.rows) {
        bad_request("input '" + feature.input + "' holds " + std::to_string(ids.shape[0]) + " rows, input '" +
                    features_.front().input + "' " + std::to_string(batch.rows));
      }
      place(reinterpret_cast<const int64_t*>(ids.data), batch.rows, feature, 0, columns_, batch.ids.data());
    }
    check_ids(batch);  // a bad id is reported before a misshapen weights tensor, as the reference does
    for (const auto& feature : features_) {
      if (feature.weights_input.empty()) continue;
      const InputTensor& ids = inputs.get(feature.input);
      place(weights_of(inputs, feature, ids.shape), batch.rows, feature, 0, columns_, batch.weights.data());
    }
  }

  // One user row then N candidate rows (router_model.combine_ranking_request, with its messages).
  void combine_ranking(const RequestInputs& inputs, Batch& batch) const {
    std::vector<std::pair<std::string, int64_t>> candidates;
    for (const auto& feature : features_) {
      const InputTensor& ids = ids_of(inputs, feature);
      if (feature.user_side && ids.shape[0] != 1) {
        bad_request("input '" + feature.input + "' holds " + std::to_string(ids.shape[0]) +
                    " rows; a ranking request has one user (1 row)");
      }
      if (!feature.user_side) candidates.emplace_back(feature.input, ids.shape[0]);
    }
    const int64_t count = candidates.empty() ? 0 : candidates.front().second;
    if (std::any_of(candidates.begin(), candidates.end(), [&](const auto& c) { return c.second != count; })) {
      std::string listed;
      for (const auto& [name, rows] : candidates) {
        listed += (listed.empty() ? "'" : ", '") + name + "': " + std::to_string(rows);
      }
      bad_request("the candidate inputs disagree on the number of candidates: {" + listed + "}");
    }
    if (max_rows_ && static_cast<size_t>(1 + count) > max_rows_) {
      bad_request("a ranking request holds at most " + std::to_string(max_rows_ - 1) +
                  " candidates (max_batch_size - 1), got " + std::to_string(count));
    }
    batch.rows = static_cast<size_t>(1 + count);
    batch.columns = columns_;
    batch.ids.assign(batch.rows * columns_, -1);
    if (weighted_) {
      batch.weights.assign(batch.rows * columns_, 1.0f);
    } else {
      batch.weights.clear();
    }
    for (const auto& feature : features_) {
      const InputTensor& ids = inputs.get(feature.input);
      const size_t first_row = feature.user_side ? 0 : 1;
      place(reinterpret_cast<const int64_t*>(ids.data), static_cast<size_t>(ids.shape[0]), feature, first_row,
            columns_, batch.ids.data());
      if (feature.weights_input.empty()) continue;
      const InputTensor& given = inputs.get(feature.weights_input);
      if (given.shape.empty() || given.shape[0] != ids.shape[0]) {
        bad_request("input '" + given.name + "' holds " + std::to_string(given.shape.empty() ? 0 : given.shape[0]) +
                    " rows, its ids " + std::to_string(ids.shape[0]));
      }
    }
    check_ids(batch);  // then the weights' shapes, as the reference does
    for (const auto& feature : features_) {
      if (feature.weights_input.empty()) continue;
      const InputTensor& ids = inputs.get(feature.input);
      place(weights_of(inputs, feature, ids.shape), static_cast<size_t>(ids.shape[0]), feature,
            feature.user_side ? 0 : 1, columns_, batch.weights.data());
    }
  }

  // INVALID_ARG naming the first table, in order, that holds an id outside [-1, num_rows), and its first such id.
  void check_ids(const Batch& batch) const {
    for (const auto& feature : features_) {
      for (size_t row = 0; row < batch.rows; ++row) {
        for (size_t j = 0; j < feature.ids_per_sample; ++j) {
          const int64_t id = batch.ids[row * batch.columns + feature.first_column + j];
          if (id >= -1 && id < static_cast<int64_t>(feature.num_rows)) continue;
          bad_request("input '" + feature.input + "' holds id " + std::to_string(id) +
                      ", outside the allowed range -1 (padding) to " + std::to_string(feature.num_rows - 1) +
                      " of table '" + feature.table + "'");
        }
      }
    }
  }

  void drop_padding(Batch& batch) const {
    for (const auto& feature : features_) {
      if (feature.padding_id < 0) continue;
      for (size_t row = 0; row < batch.rows; ++row) {
        int64_t* ids = batch.ids.data() + row * batch.columns + feature.first_column;
        for (size_t j = 0; j < feature.ids_per_sample; ++j) ids[j] = ids[j] == feature.padding_id ? -1 : ids[j];
      }
    }
  }

  // Per sample, the ids of every mean-pooled feature (before the front cache takes its share).
  const std::vector<float>& count_pooled(const Batch& batch, std::vector<float>& counts) const {
    counts.assign(batch.rows * counted_.size(), 0.0f);
    for (size_t row = 0; row < batch.rows; ++row) {
      for (size_t slot = 0; slot < counted_.size(); ++slot) {
        const Feature& feature = features_[counted_[slot]];
        const int64_t* ids = batch.ids.data() + row * batch.columns + feature.first_column;
        counts[row * counted_.size() + slot] =
            static_cast<float>(std::count_if(ids, ids + feature.ids_per_sample, [](int64_t id) { return id >= 0; }));
      }
    }
    return counts;
  }

  void to_ranks(Batch& batch) const {
    for (const auto& feature : features_) {
      if (!feature.ranks) continue;
      for (size_t row = 0; row < batch.rows; ++row) {
        int64_t* ids = batch.ids.data() + row * batch.columns + feature.first_column;
        for (size_t j = 0; j < feature.ids_per_sample; ++j) {
          if (ids[j] >= 0) ids[j] = rank_of(feature, static_cast<size_t>(ids[j]));
        }
      }
    }
  }

  // Pools the cached tables' hottest ranks from the router's copy ([rows, cache width]) and takes them out.
  const std::vector<float>& front_cache(Batch& batch, std::vector<float>& pooled) const {
    pooled.assign(batch.rows * cache_width_, 0.0f);
    if (cache_width_ == 0) return pooled;
    uint64_t lookups = 0;
    uint64_t hits = 0;
    size_t offset = 0;
    for (const auto& feature : features_) {
      if (!feature.cache) continue;
      const size_t dim = feature.cache->columns();
      for (size_t row = 0; row < batch.rows; ++row) {
        float* accumulator = pooled.data() + row * cache_width_ + offset;
        for (size_t j = 0; j < feature.ids_per_sample; ++j) {
          const size_t at = row * batch.columns + feature.first_column + j;
          const int64_t rank = batch.ids[at];
          if (rank < 0) continue;
          ++lookups;
          if (static_cast<size_t>(rank) >= feature.cached_rows) continue;
          ++hits;
          const float weight = batch.weights.empty() ? 1.0f : batch.weights[at];
          const float* values = reinterpret_cast<const float*>(feature.cache->row(static_cast<size_t>(rank)));
          for (size_t d = 0; d < dim; ++d) accumulator[d] += weight * values[d];
          batch.ids[at] = -1;  // served here: no shard sees it
        }
      }
      offset += dim;
    }
    if (cache_lookups_) {
      cache_lookups_->increment(static_cast<double>(lookups));
      cache_hits_->increment(static_cast<double>(hits));
    }
    return pooled;
  }

  void route(const Batch& batch, std::vector<std::vector<int32_t>>* packed,
             std::vector<std::vector<float>>* packed_weights) const {
    packed->resize(outputs_.size());
    packed_weights->resize(outputs_.size());
    for (size_t index = 0; index < outputs_.size(); ++index) {
      const PackedOutput& output = outputs_[index];
      (*packed)[index].assign(batch.rows * output.width, -1);
      (*packed_weights)[index].assign(output.weights ? batch.rows * output.width : 0, 0.0f);
    }
    for (const auto& feature : features_) {
      for (size_t row = 0; row < batch.rows; ++row) {
        for (size_t j = 0; j < feature.ids_per_sample; ++j) {
          const size_t at = row * batch.columns + feature.first_column + j;
          const int64_t rank = batch.ids[at];
          if (rank < 0) continue;
          // The last shard starting at or before the rank (empty shards share their start with the next one).
          const size_t shard = static_cast<size_t>(std::upper_bound(feature.boundaries.begin(),
                                                                    feature.boundaries.end() - 1,
                                                                    static_cast<size_t>(rank)) -
                                                   feature.boundaries.begin()) - 1;
          const size_t output = feature.shard_outputs[shard];
          const size_t column = row * outputs_[output].width + feature.shard_columns[shard] + j;
          (*packed)[output][column] = static_cast<int32_t>(rank + feature.shard_shifts[shard]);
          if (!(*packed_weights)[output].empty()) (*packed_weights)[output][column] = batch.weights[at];
        }
      }
    }
  }

  template <typename T>
  static void copy_out(TRITONBACKEND_Response* response, const TensorSpec& spec, int64_t rows, size_t width,
                       const T* values) {
    size_t bytes = 0;
    uint8_t* buffer = add_output(response, spec, {rows, static_cast<int64_t>(width)}, &bytes);
    if (bytes != static_cast<size_t>(rows) * width * sizeof(T)) {
      throw Error(TRITONSERVER_ERROR_INTERNAL, "output '" + spec.name + "' is not " + std::to_string(width) + " wide");
    }
    std::memcpy(buffer, values, bytes);
  }

  bool ranking_;
  size_t max_rows_ = 0;
  bool weighted_ = false;
  size_t columns_ = 0;
  std::vector<Feature> features_;
  std::vector<PackedOutput> outputs_;
  std::vector<size_t> counted_;
  std::string counts_output_;
  TensorSpec counts_spec_;
  std::vector<std::string> finite_inputs_;
  std::string cache_output_;
  TensorSpec cache_spec_;
  size_t cache_width_ = 0;
  std::vector<PooledGroup> groups_;
  std::unique_ptr<JsonParameter> access_counts_;
  std::string model_name_;
  std::vector<std::unique_ptr<AccessCounter>> counters_;  // one per instance
  size_t instances_ = 0;
  std::unique_ptr<Admission> admission_;
  std::unique_ptr<CounterMetric> cache_lookups_;
  std::unique_ptr<CounterMetric> cache_hits_;
};

}  // namespace

std::unique_ptr<Step> make_router_step(const ModelConfig& config, const std::string& version_dir,
                                       TRITONSERVER_Server* server) {
  return std::make_unique<RouterStep>(config, version_dir, server);
}

}  // namespace recgen
