"""AgentGraph: place AI-agent graphs on heterogeneous hardware at the lowest cost meeting an SLA."""

__version__ = "0.1.0"
