// Admission control of a native router: recgen_admission.py's policy, read from the server in-process.
//
// A thread of the model reads the server's own metrics (TRITONSERVER_ServerMetrics, the text /metrics serves) every
// few milliseconds: for each step of the router's ensemble, the requests waiting and, from the counters' growth, how
// long an instance takes per request. The wait a request arriving now would see is, at the step where it is
// longest, pending x time per request / instances. Above the budget every instance sheds its whole batch as
// UNAVAILABLE without reading it. The model's instances are threads of one process, so the estimate is a number in
// memory, not the shared file the Python routers' stubs use. Without metrics nothing is shed, and that is logged.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "params.h"
#include "triton_api.h"

namespace recgen {

// Seconds an instance takes per request before the counters have said anything (recgen_admission's default).
constexpr double kDefaultSecondsPerRequest = 750e-6;

// One step's counters as last read, and the running time an instance takes per request.
struct StepLoad {
  std::string model;
  int64_t instances = 1;
  double seconds_per_request = kDefaultSecondsPerRequest;
  std::map<std::string, double> counters;

  // Folds in one window's growth (compute per request x executions per request, smoothed).
  void update(const std::map<std::string, double>& now);
};

// Per model of `models`, the nv_inference_* values of Prometheus text `text`, summed over versions.
std::map<std::string, std::map<std::string, double>> parse_metrics(const std::string& text,
                                                                  const std::vector<std::string>& models);

class Admission {
 public:
  // From the `admission` parameter (recgen_params.AdmissionParams); `server` is the server the model belongs to.
  Admission(const JsonParameter& parameter, const std::string& model_name, TRITONSERVER_Server* server);
  ~Admission();
  Admission(const Admission&) = delete;
  Admission& operator=(const Admission&) = delete;

  // Why to shed a batch now; empty: admit it.
  std::string shed_message() const;

 private:
  void run();
  double poll_once();  // reads the metrics once, updates the estimate; throws Error when they cannot be read

  std::string model_name_;
  TRITONSERVER_Server* server_;
  double budget_s_ = 0;
  std::vector<StepLoad> steps_;
  std::atomic<double> wait_s_{0.0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

// A Prometheus counter of the server's /metrics with one label set (a custom metric; deleted with it).
class CounterMetric {
 public:
  CounterMetric(const std::string& name, const std::string& description, const std::string& label,
                const std::string& value);
  ~CounterMetric();
  CounterMetric(const CounterMetric&) = delete;
  CounterMetric& operator=(const CounterMetric&) = delete;
  void increment(double value) const;

 private:
  TRITONSERVER_MetricFamily* family_ = nullptr;
  TRITONSERVER_Metric* metric_ = nullptr;
};

}  // namespace recgen
