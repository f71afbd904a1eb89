// The router (`recgen_native_step: router`): the native twin of router_model.py, reading the same typed parameters
// (`routing`, `request_checks`, `front_cache`, `ranking_router`, `router_pooling`, `access_counts`, `admission`)
// and the same files (`row_ranks__<table>.npy`, `front_cache__<table>.npy`, the pooled groups' stacks).
//
// Per request: the dense features and weights are checked finite, a ranking request's user and candidates become
// one batch (row 0 the user), every id is checked against its table, padding ids are dropped, the mean-pooled
// features' ids are counted, the access counters count the ids, permuted tables' ids become hotness ranks, the
// front cache pools the hottest ranks itself, and the rest are routed into every shard group's packed row ids;
// the groups the router pools itself (the fused lookup step) become their partial sums.
#pragma once

#include <memory>
#include <string>

#include "config.h"
#include "step.h"

namespace recgen {

std::unique_ptr<Step> make_router_step(const ModelConfig& config, const std::string& version_dir,
                                       TRITONSERVER_Server* server);

}  // namespace recgen
