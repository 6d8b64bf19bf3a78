"""The fast path: the gateway that executes a placed AgentGraph and the reference step workers."""
