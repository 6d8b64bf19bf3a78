"""Cost models: how long a step (or an LLM phase) takes on a pool, and what it costs."""
