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
# Every number a user writes stays finite and within a range no real graph or device leaves:
# past it the cost arithmetic overflows (1e308 * 10) or divides by a denormal (1 / 5e-324).
# The bounds go into the CRD too, so the API server refuses such a number with the field named.
MAX_NUMBER = 1e9
MIN_POSITIVE = 1e-9
MAX_COUNT = 1_000_000_000_000  # integers: vectors in an index, hidden sizes, node counts
PositiveFloat = Annotated[float, Field(ge=MIN_POSITIVE, le=MAX_NUMBER)]
NonNegativeFloat = Annotated[float, Field(ge=0, le=MAX_NUMBER)]
Fraction = Annotated[float, Field(ge=MIN_POSITIVE, le=1)]


class ApiModel(BaseModel):
    """Frozen, camelCase on the wire, unknown fields rejected (a typo must not pass silently),
    no infinity or NaN."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata the planner reads; the API server's own fields pass."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    name: Name
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
