"""Planning: the plan value, its file, the capacity and memory models, cuts, placement, the report, the planner."""
