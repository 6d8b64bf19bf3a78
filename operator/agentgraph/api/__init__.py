"""Wire shapes: the only place where AgentGraph, HardwareProfile and Plan are defined."""

GROUP = "agentgraph.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
