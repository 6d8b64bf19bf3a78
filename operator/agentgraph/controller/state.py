"""What the operator's handlers share: one typed object, set up by main() and kopf's start-up
handlers (no module-level dict)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentgraph.controller.cluster import Cluster
from agentgraph.controller.config import OperatorConfig
from agentgraph.controller.leader import Leader
from agentgraph.controller.ledger import Ledger
from agentgraph.controller.podwatch import PodWatch
from agentgraph.controller.prometheus import Prometheus

if TYPE_CHECKING:  # it reads STATE
    from agentgraph.controller.admitter import Admitter


@dataclass
class State:
    """Everything the handlers share, set up by main() and kopf's start-up handlers."""

    config: OperatorConfig = field(default_factory=OperatorConfig)
    cluster: Cluster | None = None
    prometheus: Prometheus | None = None
    leader: Leader | None = None
    loop: asyncio.AbstractEventLoop | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    indexes: dict[str, Any] | None = None  # kopf's live index views, for the loops
    pod_watch: PodWatch | None = None  # every pod, when kopf watches only some namespaces
    fingerprints: dict[str, Any] = field(default_factory=dict)  # per node: what we read of it
    last_full: dict[tuple[str, str], float] = field(default_factory=dict)  # monotonic seconds
    # per graph, the (uid, metadata.generation) last sent to a FULL reconcile (a spec change
    # bumps the generation; a graph created again under the name has a new uid)
    generations: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict)
    # per profile, what the plans read of it last: (generation, annotations)
    profile_generations: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    started: bool = False
    ledger: Ledger = field(default_factory=Ledger)  # what every admitted graph holds
    admitter: Admitter | None = None  # decides newcomers; set up by main()


STATE = State()
