"""Errors raised by recgen.

The hierarchy, so callers can catch at the level they care about::

    RecgenError                      any error recgen raises on purpose
    ├── UserInputError               the input (model file, flags, plan, request) is wrong; fix it and retry
    │   ├── ModelFileError           a model file cannot be read or does not follow the DLRM protocol
    │   ├── ModelImportError         a module or program cannot be cut at its embedding bags (names the node)
    │   ├── PlanError                a plan is inconsistent with its model or with itself
    │   └── OutputExistsError        the output directory exists and `--force` was not given
    ├── ExportError                  torch.onnx.export failed, or its graph disagrees with PyTorch
    ├── ConfigValidationError        a generated config.pbtxt does not parse back with Triton's schema (a bug)
    ├── ServerError                  the embedded tritonserver could not be started or stopped
    │   ├── ModelLoadError           the server started but a model failed to load
    │   ├── ServerUnreachableError   no Triton server answers at the URL a client was given
    │   ├── UpdateError              an update did not switch; the old generation keeps serving (says why)
    │   └── NativeUnavailableError   the native backend cannot be built here (says why and what to install)
    └── CheckFailedError             served scores differ from PyTorch by more than the tolerance
"""

from __future__ import annotations


class RecgenError(Exception):
    """Base class of every error recgen raises on purpose."""


class UserInputError(RecgenError):
    """The input is wrong; the message names the field and the allowed values."""


class ModelFileError(UserInputError):
    """A model file cannot be read or does not follow the DLRM protocol."""


class ModelImportError(UserInputError):
    """A module or program cannot be served as sharded tables plus a dense graph; the message names the node."""


class PlanError(UserInputError):
    """A plan is inconsistent with its model or with itself."""


class OutputExistsError(UserInputError):
    """The output directory exists and overwriting was not requested."""


class ExportError(RecgenError):
    """torch.onnx.export failed, or the exported graph disagrees with PyTorch on a check batch."""


class ConfigValidationError(RecgenError):
    """A generated config.pbtxt does not parse back strictly with Triton's protobuf schema."""


class ServerError(RecgenError):
    """The embedded tritonserver could not be started, or stopped unexpectedly."""


class ModelLoadError(ServerError):
    """The server started but at least one model failed to load; the message holds the server's error lines."""


class ServerUnreachableError(ServerError):
    """No Triton server answers at the URL a client was given."""


class UpdateError(ServerError):
    """`recgen update` did not switch the deployment; the old generation keeps serving and the message says why."""


class NativeUnavailableError(ServerError):
    """The native backend cannot be built or was not built here; the message says why and what to install."""


class CheckFailedError(RecgenError):
    """Served scores differ from the PyTorch reference by more than the tolerance."""
