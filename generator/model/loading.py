"""Read a model file of any kind recgen accepts, never unpickling beyond an explicit allowlist.

- recgen's own DLRM file (`DLRM.save`): the numpy fast path.
- a `torch.export` program (`.pt2`, from `torch.export.save`): cut at its embedding bags.

`torch.export.load` unpickles a program's pickled weights and constants with `weights_only=False` and falls
back to it for example inputs it cannot read otherwise. So every pickled member is first read with
`weights_only=True` (tensors, builtins and TorchRec's KeyedJaggedTensor only), custom and opaque objects are
refused, and only then are the same bytes handed to `torch.export.load`.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from generator.errors import ModelFileError, UserInputError
from generator.model.dlrm import DLRM, MODEL_FILE_FORMAT
from generator.model.import_settings import IMPORT_SETTINGS_FILE, ImportSettings
from generator.model.imported import ImportedModel, import_program
from generator.model.pt2_files import quiet_tracing

PROGRAM_SUFFIX = ".pt2"


def safe_globals() -> list[Any]:
    """Classes a model file may hold besides tensors and builtins: TorchRec's jagged tensors, when installed."""
    try:
        with warnings.catch_warnings():  # fbgemm warns about optional CUDA kernels a CPU build lacks
            warnings.simplefilter("ignore")
            from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor
    except ImportError:
        return []
    return [KeyedJaggedTensor, JaggedTensor, KeyedTensor]


@contextlib.contextmanager
def _allowlisted() -> Iterator[None]:
    with torch.serialization.safe_globals(safe_globals()):
        yield


def _pickled_members(archive: zipfile.ZipFile) -> Iterator[str]:
    """Every member torch.export.load would unpickle; raises ModelFileError on objects it would run code for."""
    names = archive.namelist()
    for config_name in [n for n in names if n.endswith(("model_weights_config.json", "model_constants_config.json"))]:
        folder = config_name.rsplit("/", 1)[0]
        config = json.loads(archive.read(config_name)).get("config", {})
        for fqn, meta in config.items():
            path_name = str(meta.get("path_name", ""))
            if path_name.startswith(("custom_obj", "opaque_obj")):
                raise ModelFileError(f"the program holds a custom object {fqn!r}; recgen does not unpickle objects")
            if meta.get("use_pickle"):
                yield f"{folder}/{path_name}"
    yield from (n for n in names if "/data/sample_inputs/" in n)


def load_program(path: Path, extra_files: dict[str, Any] | None = None) -> torch.export.ExportedProgram:
    """A `.pt2` program, after checking that nothing in it unpickles beyond tensors and the allowlist.

    The pickled members (small: example inputs, odd weights) are checked from the archive; the program is then
    loaded from the path, so the weights are read once. `extra_files`: names to read from the archive (filled in).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            for member in _pickled_members(archive):
                with _allowlisted():
                    torch.load(io.BytesIO(archive.read(member)), map_location="cpu", weights_only=True)
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise ModelFileError(f"`{path}` is not a torch.export program file: {error}") from error
    except Exception as error:  # weights_only refusals come as UnpicklingError or RuntimeError
        raise ModelFileError(
            f"`{path}` holds pickled data beyond tensors and the allowlist ({str(error).splitlines()[0]}); "
            "recgen does not unpickle it"
        ) from error
    try:
        with _allowlisted(), quiet_tracing():
            return torch.export.load(path, extra_files=extra_files)
    except Exception as error:  # torch raises many types for a program it cannot read
        raise ModelFileError(f"`{path}` cannot be read as a torch.export program: {error}") from error


def load_model(
    path: str | Path, *, max_ids: Mapping[str, int] | None = None, user_features: Sequence[str] = ()
) -> DLRM | ImportedModel:
    """Recgen's DLRM file, or a `.pt2` program cut at its embedding bags.

    `max_ids`: ids per sample per feature of a program; `user_features`: its user-side features and dense inputs.
    A program recgen saved carries both (`import_settings`); these flags must then agree with it.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file `{path}` does not exist")
    if path.suffix == PROGRAM_SUFFIX or (zipfile.is_zipfile(path) and _is_program(path)):
        record: dict[str, Any] = {IMPORT_SETTINGS_FILE: ""}
        program = load_program(path, record)
        if record[IMPORT_SETTINGS_FILE]:  # saved by recgen: what the import chose, unless a flag disagrees
            settings = ImportSettings.from_json(record[IMPORT_SETTINGS_FILE], str(path))
            max_ids, user_features = settings.resolve(max_ids, user_features, str(path))
        imported = import_program(program, max_ids=max_ids)
        return imported.with_user_side(user_features) if user_features else imported
    if user_features:
        raise UserInputError(
            "`user_features` is for imported programs; recgen's DLRM keeps each table's side in its model file"
        )
    try:
        return DLRM.load(path)
    except ModelFileError as error:
        raise ModelFileError(
            f"{error}. recgen reads its own DLRM files ({MODEL_FILE_FORMAT}) and torch.export programs "
            f"({PROGRAM_SUFFIX}); export another module with torch.export (docs/usage.md: Bring your own model)"
        ) from error


def _is_program(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(
            name.endswith("/models/model.json") or name.endswith("archive_format") for name in archive.namelist()
        )
