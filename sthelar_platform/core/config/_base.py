"""The base of every config schema: validated, immutable sections read by attribute."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt


class Section(BaseModel):
    """A validated, immutable config section: an unknown key is refused, fields are read as attributes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# Numbers keep the type YAML gave them (an int stays an int where a stage indexes with it).
Num = int | float
PosNum = PositiveInt | PositiveFloat
Range = tuple[Num, Num]
Vec3 = tuple[Num, Num, Num]
