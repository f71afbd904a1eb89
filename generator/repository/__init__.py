"""The repository stage: wire layout, typed parameters, Triton configs, validation, export, staging, build."""
