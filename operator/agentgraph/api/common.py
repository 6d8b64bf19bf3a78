"""Base model and small shared types for every wire shape."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

# A DNS-1123 label: what Kubernetes accepts as a Service name, short enough that
# "<graph>-<step>-<phase>" still fits in 63 characters.
Name = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", min_length=1, max_length=40),
]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


class ApiModel(BaseModel):
    """Frozen, camelCase on the wire, unknown fields rejected (a typo must not pass silently)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata the planner reads; the API server's own fields pass."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    name: Name
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
