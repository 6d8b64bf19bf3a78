"""A step's container: its own image, or the reference worker's pod, and the environment it
gets (plain values, Secret and ConfigMap references) and the secrets to pull its image with."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, model_validator

from agentgraph.api.common import ApiModel

ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"  # what the API server takes for an env var
# Variables the operator sets on every step pod: a step's own would clash with them.
RESERVED_ENV = frozenset({"POD_IP", "POD_NAMESPACE"})
RESERVED_ENV_PREFIX = "AGENTGRAPH_"
# A Secret's or ConfigMap's name: a DNS-1123 subdomain.
ObjectName = Annotated[str, Field(min_length=1, max_length=253,
                                  pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]


class KeyRef(ApiModel):
    name: ObjectName
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    optional: bool = False


def _exactly_one(first: object, second: object, names: str) -> None:
    if (first is None) == (second is None):
        raise ValueError(f"give exactly one of {names}")


class EnvSource(ApiModel):
    """One environment variable from a key of a Secret or of a ConfigMap."""

    secret_key_ref: KeyRef | None = None
    config_map_key_ref: KeyRef | None = None

    @model_validator(mode="after")
    def _one(self) -> EnvSource:
        _exactly_one(self.secret_key_ref, self.config_map_key_ref,
                     "secretKeyRef and configMapKeyRef")
        return self


class ObjectRef(ApiModel):
    name: ObjectName
    optional: bool = False


class EnvFrom(ApiModel):
    """Every key of a Secret or a ConfigMap as environment variables."""

    secret_ref: ObjectRef | None = None
    config_map_ref: ObjectRef | None = None
    prefix: str | None = Field(default=None, max_length=64, pattern=ENV_NAME)

    @model_validator(mode="after")
    def _one(self) -> EnvFrom:
        _exactly_one(self.secret_ref, self.config_map_ref, "secretRef and configMapRef")
        return self


class Container(ApiModel):
    """The step's pods' container. Without ``image`` it is the reference worker, and only the
    environment and pull secrets apply: a step reads its API keys from a Secret either way."""

    image: str | None = Field(default=None, min_length=1)
    args: list[str] = Field(default_factory=list, max_length=64)
    env: dict[str, str] = Field(default_factory=dict)  # plain values: never a secret
    # variable -> the Secret or ConfigMap key it is read from
    value_from: dict[str, EnvSource] = Field(default_factory=dict)
    env_from: list[EnvFrom] = Field(default_factory=list, max_length=16)
    image_pull_secrets: list[ObjectName] = Field(default_factory=list, max_length=16)
    port: int | None = Field(default=None, ge=1, le=65535)  # default 8080

    @model_validator(mode="after")
    def _consistent(self) -> Container:
        if self.image is None and (self.args or self.port is not None):
            raise ValueError("args and port belong to a step's own image: give image, or "
                             "leave them out to run the reference worker")
        for field, names in (("env", self.env), ("valueFrom", self.value_from)):
            bad = sorted(n for n in names if not re.match(ENV_NAME, n))
            if bad:
                raise ValueError(f"{field}: {bad} are not environment variable names "
                                 "(letters, digits, '_', '-', '.'; not starting with a digit)")
        both = sorted(set(self.env) & set(self.value_from))
        if both:
            raise ValueError(f"{both} are in both env and valueFrom: give each variable once")
        ours = sorted(n for n in (*self.env, *self.value_from)
                      if n in RESERVED_ENV or n.startswith(RESERVED_ENV_PREFIX))
        if ours:
            raise ValueError(f"{ours} are set by the operator (POD_IP, POD_NAMESPACE and "
                             f"{RESERVED_ENV_PREFIX}*): use other names")
        return self
