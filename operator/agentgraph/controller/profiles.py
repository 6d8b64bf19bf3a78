"""HardwareProfiles the operator installs from its settings (the chart's values), so a release
can ship pools without putting custom resources next to the CRDs that define them: Helm builds
every object of a release before it creates anything, so on a first install it cannot map a
HardwareProfile whose CRD is in the same release.

The leader applies them at start-up (server-side, field manager agentgraph-operator) and deletes
the ones it installed earlier that the settings no longer list. Profiles installed otherwise
(kubectl, Argo CD), or by another release (namespaced installs, each with its own Lease
namespace, may share a cluster), are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pydantic
from kubernetes import client

from agentgraph.api import GROUP, VERSION
from agentgraph.api.hardware import HardwareProfile
from agentgraph.api.loading import parse, validation_lines
from agentgraph.controller.cluster import APPLY, FIELD_MANAGER

log = logging.getLogger("agentgraph.profiles")
LABEL_SOURCE = f"{GROUP}/installed-by"
SOURCE = "operator-settings"
LABEL_OWNER = f"{GROUP}/installed-for"  # the installing operator's Lease namespace
PROFILE_CACHE = 1000  # validated profiles kept, by (name, resourceVersion)
_profiles_seen: dict[tuple[str, str], tuple[HardwareProfile | None, list[str]]] = {}


def manifests(profiles: Iterable[HardwareProfile], owner: str) -> list[dict[str, Any]]:
    """What to apply: each profile as written, marked as installed from the settings of the
    operator whose Lease is in namespace ``owner``."""
    out = []
    for p in sorted(profiles, key=lambda p: p.name):
        labels = {**p.metadata.labels, LABEL_SOURCE: SOURCE, LABEL_OWNER: owner}
        out.append({"apiVersion": f"{GROUP}/{VERSION}", "kind": "HardwareProfile",
                    "metadata": {"name": p.name, "labels": labels},
                    "spec": p.spec.model_dump(by_alias=True, exclude_none=True, mode="json")})
    return out


def stale(installed: Iterable[Mapping[str, Any]], wanted: Iterable[str],
          owner: str) -> list[str]:
    """Profiles we installed before that the settings no longer list. One marked without an
    owner (before installs were told apart) counts as ours."""
    keep = set(wanted)
    out = []
    for o in installed:
        labels = o.get("metadata", {}).get("labels", {})
        if (labels.get(LABEL_SOURCE) == SOURCE and labels.get(LABEL_OWNER, owner) == owner
                and o["metadata"]["name"] not in keep):
            out.append(o["metadata"]["name"])
    return sorted(out)


def load(path: str | Path) -> list[HardwareProfile]:
    """The profiles in a (multi-document) YAML file; LoadError names each bad field."""
    return parse(Path(path).read_text(), str(path)).profiles


def install(api: client.ApiClient, profiles: list[HardwareProfile], owner: str) -> None:
    custom = client.CustomObjectsApi(api)
    wanted = manifests(profiles, owner)
    listed = custom.list_cluster_custom_object(GROUP, VERSION, "hardwareprofiles")
    others = {o["metadata"]["name"] for o in (listed.get("items", [])
                                              if isinstance(listed, dict) else [])
              if o.get("metadata", {}).get("labels", {}).get(LABEL_SOURCE) != SOURCE}
    for manifest in wanted:
        name = manifest["metadata"]["name"]
        if name in others:  # installed by kubectl, Argo CD or the chart: theirs, not ours
            log.warning("HardwareProfile %s exists and was not installed from the settings: "
                        "left as it is (the settings' copy is not applied)", name)
            continue
        custom.patch_cluster_custom_object(
            GROUP, VERSION, "hardwareprofiles", name, manifest,
            field_manager=FIELD_MANAGER, force=True, _content_type=APPLY)
    listed = custom.list_cluster_custom_object(GROUP, VERSION, "hardwareprofiles",
                                               label_selector=f"{LABEL_SOURCE}={SOURCE}")
    items = listed.get("items", []) if isinstance(listed, dict) else []
    for name in stale(items, (m["metadata"]["name"] for m in wanted), owner):
        custom.delete_cluster_custom_object(GROUP, VERSION, "hardwareprofiles", name)
        log.info("deleted HardwareProfile %s: no longer in the settings", name)
    log.info("installed %d HardwareProfile(s) from the settings",
             len([m for m in wanted if m["metadata"]["name"] not in others]))


def _profile(raw: Mapping[str, Any]) -> tuple[HardwareProfile | None, list[str]]:
    meta = raw.get("metadata", {})
    key = (meta.get("name", "?"), meta.get("resourceVersion", ""))
    found = _profiles_seen.get(key)
    if found is None:
        try:
            found = (HardwareProfile.model_validate(raw), [])
        except pydantic.ValidationError as e:
            found = (None, validation_lines(f"HardwareProfile/{key[0]}", e))
        if len(_profiles_seen) > PROFILE_CACHE:  # old resourceVersions pile up otherwise
            _profiles_seen.clear()
        _profiles_seen[key] = found
    return found


def problems(raw: Mapping[str, Any]) -> list[str]:
    """What makes one HardwareProfile unusable, one line per field; empty when it is fine."""
    return _profile(raw)[1]


def validated(raw_profiles: list[Any]) -> tuple[list[HardwareProfile], list[str]]:
    good, bad = [], []
    for raw in sorted(raw_profiles, key=lambda r: r["metadata"]["name"]):
        profile, problems = _profile(raw)
        if profile is not None:
            good.append(profile)
        bad.extend(problems)
    return good, bad
