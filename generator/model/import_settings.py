"""How recgen imported a program, recorded inside the `.pt2` it saves: every feature's ids per sample, the user side.

`ImportedModel.save` writes the record beside the program; `loading.load_model` reads it, so a later build, plan or
check serves what the import chose without repeating the flags. A flag that disagrees with the record is an error
that names both; a program recgen did not save (no record) takes the flags as before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from generator.errors import ModelFileError, UserInputError
from generator.model.features import FeatureSpec

#: The archive member holding the record.
IMPORT_SETTINGS_FILE = "recgen_import.json"


@dataclass(frozen=True)
class ImportSettings:
    """Ids per sample of every feature, and the features and dense inputs on the user side."""

    max_ids: dict[str, int]
    user_side: tuple[str, ...]

    @classmethod
    def of(cls, features: Sequence[FeatureSpec], user_inputs: Sequence[str]) -> ImportSettings:
        """The record of an imported model."""
        user_side = sorted([f.name for f in features if f.side == "user"] + list(user_inputs))
        return cls({f.name: f.max_ids_per_sample for f in features}, tuple(user_side))

    def to_json(self) -> str:
        """The record as the archive holds it."""
        return json.dumps({"max_ids": self.max_ids, "user_side": list(self.user_side)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> ImportSettings:
        """The record read back; ModelFileError naming `source` when it is not one."""
        try:
            document = json.loads(text)
            max_ids = {str(name): int(value) for name, value in document["max_ids"].items()}
            user_side = tuple(str(name) for name in document["user_side"])
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ModelFileError(f"`{source}`: its {IMPORT_SETTINGS_FILE} is not recgen's record ({error})") from error
        return cls(max_ids, user_side)

    def resolve(
        self, max_ids: Mapping[str, int] | None, user_features: Sequence[str], source: str
    ) -> tuple[dict[str, int], tuple[str, ...]]:
        """The ids per sample and user side to import with: the record, after checking the flags agree with it."""
        flags = dict(max_ids or {})
        for feature, recorded in self.max_ids.items():
            given = flags.get(feature, flags.get("*"))
            if given is not None and given != recorded:
                raise UserInputError(
                    f"--max-ids gives feature {feature!r} {given} ids per sample, but `{source}` was imported with "
                    f"{recorded}: drop --max-ids (the file says it), or import the model again with {given}"
                )
        if self.user_side and user_features and sorted(user_features) != sorted(self.user_side):
            raise UserInputError(
                f"--user-features {','.join(user_features)} disagrees with `{source}`, imported with the user side "
                f"{','.join(self.user_side)}: drop --user-features (the file says it), or import the model again"
            )
        return dict(self.max_ids), tuple(self.user_side) or tuple(user_features)
