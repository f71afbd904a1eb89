#include "admission.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <sstream>
#include <utility>

#include "status.h"

namespace recgen {
namespace {

// The shed message's start, which clients and the load tests match on (recgen_admission.SHED_MESSAGE).
constexpr const char* kShedMessage = "overloaded: shed by the router";
constexpr std::chrono::milliseconds kBusyPoll{10};
constexpr std::chrono::milliseconds kIdlePoll{100};
constexpr double kMetricsGraceS = 30.0;
constexpr double kSmoothing = 0.2;
constexpr const char* kPending = "nv_inference_pending_request_count";
const char* const kCounters[] = {"nv_inference_request_success", "nv_inference_exec_count",
                                 "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                                 "nv_inference_compute_output_duration_us"};

struct MetricsDeleter {
  void operator()(TRITONSERVER_Metrics* metrics) const { ServerError ignored(TRITONSERVER_MetricsDelete(metrics)); }
};

std::string metrics_text(TRITONSERVER_Server* server) {
  TRITONSERVER_Metrics* raw = nullptr;
  check(TRITONSERVER_ServerMetrics(server, &raw), "reading the server's metrics");
  const std::unique_ptr<TRITONSERVER_Metrics, MetricsDeleter> metrics(raw);
  const char* base = nullptr;
  size_t byte_size = 0;
  check(TRITONSERVER_MetricsFormatted(metrics.get(), TRITONSERVER_METRIC_PROMETHEUS, &base, &byte_size),
        "formatting the server's metrics");
  return std::string(base, byte_size);
}

// "{wait:.0f}" and "{budget:g}" as Python formats them, for the shed message.
std::string format(const char* pattern, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, pattern, value);
  return buffer;
}

}  // namespace

void StepLoad::update(const std::map<std::string, double>& now) {
  std::map<std::string, double> before = counters;
  counters.clear();
  for (const char* name : kCounters) {
    const auto found = now.find(name);
    counters[name] = found == now.end() ? 0.0 : found->second;
  }
  if (before.empty()) return;
  const double served = counters[kCounters[0]] - before[kCounters[0]];
  if (served <= 0) return;
  double compute_us = 0;
  for (size_t index = 2; index < 5; ++index) compute_us += counters[kCounters[index]] - before[kCounters[index]];
  const double executions = counters[kCounters[1]] - before[kCounters[1]];
  const double window = compute_us / served * (executions / served) / 1e6;
  seconds_per_request += kSmoothing * (window - seconds_per_request);
}

std::map<std::string, std::map<std::string, double>> parse_metrics(const std::string& text,
                                                                  const std::vector<std::string>& models) {
  std::map<std::string, std::map<std::string, double>> values;
  for (const auto& model : models) values[model];
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    // nv_inference_<name>{model="<model>",version="<version>"} <value>
    if (line.rfind("nv_inference_", 0) != 0) continue;
    const size_t brace = line.find("{model=\"");
    if (brace == std::string::npos) continue;
    const size_t model_end = line.find('"', brace + 8);
    const size_t close = line.find("} ", brace);
    if (model_end == std::string::npos || close == std::string::npos || model_end > close) continue;
    const std::string model = line.substr(brace + 8, model_end - brace - 8);
    const auto wanted = values.find(model);
    if (wanted == values.end() || line.compare(model_end, 11, "\",version=\"") != 0) continue;
    char* end = nullptr;
    const std::string number = line.substr(close + 2);
    const double value = std::strtod(number.c_str(), &end);
    if (end == number.c_str() || *end != '\0') continue;
    wanted->second[line.substr(0, brace)] += value;
  }
  return values;
}

Admission::Admission(const JsonParameter& parameter, const std::string& model_name, TRITONSERVER_Server* server)
    : model_name_(model_name), server_(server) {
  const rapidjson::Value& root = parameter.root();
  parameter.expect_keys(root, {"budget_us", "steps", "directory"}, "AdmissionParams");
  budget_s_ = static_cast<double>(parameter.integer(root, "budget_us")) / 1e6;
  for (const auto& step : parameter.list(root, "steps").GetArray()) {
    parameter.expect_keys(step, {"model", "instances"}, "AdmissionStep");
    StepLoad load;
    load.model = parameter.text(step, "model");
    load.instances = parameter.integer(step, "instances");
    steps_.push_back(std::move(load));
  }
  parameter.text(root, "directory");  // the Python routers' shared estimate lives there; a native one needs none
  thread_ = std::thread([this] { run(); });
}

Admission::~Admission() {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

std::string Admission::shed_message() const {
  const double wait_s = wait_s_.load(std::memory_order_relaxed);
  if (wait_s <= budget_s_) return "";
  return std::string(kShedMessage) + ": requests would queue about " + format("%.0f", wait_s * 1e3) +
         " ms on this server, over the " + format("%g", budget_s_ * 1e3) +
         " ms the latency target allows; retry later or elsewhere";
}

double Admission::poll_once() {
  std::vector<std::string> models;
  for (const auto& step : steps_) models.push_back(step.model);
  const auto metrics = parse_metrics(metrics_text(server_), models);
  double longest = 0;
  for (auto& step : steps_) {
    const auto& values = metrics.at(step.model);
    step.update(values);
    const auto pending = values.find(kPending);
    const double waiting = pending == values.end() ? 0.0 : pending->second;
    longest = std::max(longest, waiting * step.seconds_per_request / static_cast<double>(std::max<int64_t>(1, step.instances)));
  }
  wait_s_.store(longest, std::memory_order_relaxed);
  return longest;
}

void Admission::run() {
  using Clock = std::chrono::steady_clock;
  bool failing = false;
  bool warned = false;
  Clock::time_point failing_since;
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stopping_) {
    lock.unlock();
    std::chrono::milliseconds pause = kIdlePoll;
    try {
      pause = poll_once() > 0 ? kBusyPoll : kIdlePoll;
      if (warned) log(TRITONSERVER_LOG_WARN, "model '" + model_name_ + "': admission control is on again");
      failing = warned = false;
    } catch (const Error& error) {
      wait_s_.store(0.0, std::memory_order_relaxed);  // nothing known: admit everything
      if (!failing) failing_since = Clock::now();
      failing = true;
      if (!warned && std::chrono::duration<double>(Clock::now() - failing_since).count() > kMetricsGraceS) {
        log(TRITONSERVER_LOG_WARN, "model '" + model_name_ + "': admission control is off: the server's metrics " +
                                       "cannot be read (" + error.what() + "); start it with metrics on");
        warned = true;
      }
    }
    lock.lock();
    wake_.wait_for(lock, pause, [this] { return stopping_; });
  }
}

CounterMetric::CounterMetric(const std::string& name, const std::string& description, const std::string& label,
                             const std::string& value) {
  check(TRITONSERVER_MetricFamilyNew(&family_, TRITONSERVER_METRIC_KIND_COUNTER, name.c_str(), description.c_str()),
        "creating a metric family");
  TRITONSERVER_Parameter* labels[] = {TRITONSERVER_ParameterNew(label.c_str(), TRITONSERVER_PARAMETER_STRING,
                                                                value.c_str())};
  ServerError created(TRITONSERVER_MetricNew(&metric_, family_, const_cast<const TRITONSERVER_Parameter**>(labels), 1));
  TRITONSERVER_ParameterDelete(labels[0]);
  if (created) {
    ServerError ignored(TRITONSERVER_MetricFamilyDelete(family_));
    throw Error(TRITONSERVER_ERROR_INTERNAL, std::string("creating a metric: ") + TRITONSERVER_ErrorMessage(created.get()));
  }
}

CounterMetric::~CounterMetric() {
  ServerError metric(TRITONSERVER_MetricDelete(metric_));
  ServerError family(TRITONSERVER_MetricFamilyDelete(family_));
}

void CounterMetric::increment(double value) const {
  if (value > 0) ServerError ignored(TRITONSERVER_MetricIncrement(metric_, value));
}

}  // namespace recgen
