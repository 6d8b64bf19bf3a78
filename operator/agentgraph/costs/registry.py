"""Cost models by name, and which one a step uses."""

from __future__ import annotations

from agentgraph.api.graph import Step, StepKind
from agentgraph.costs.base import CostModel
from agentgraph.costs.llm import RooflineLLM
from agentgraph.costs.steps import Compute, SmallModel, Tool, VectorSearch
from agentgraph.costs.table import Table

_MODELS: dict[str, CostModel] = {}
_DEFAULTS: dict[StepKind, str] = {}


def register(model: CostModel, *default_for: StepKind) -> None:
    _MODELS[model.name] = model
    for kind in default_for:
        _DEFAULTS[kind] = model.name


def names() -> list[str]:
    return sorted(_MODELS)


def model_for(step: Step) -> CostModel:
    name = "table" if step.cost_model == "table" else _DEFAULTS.get(step.kind)
    if name is None or name not in _MODELS:
        raise KeyError(f"step {step.name}: no cost model for kind {step.kind}")
    return _MODELS[name]


register(RooflineLLM(), StepKind.LLM)
register(SmallModel(), StepKind.EMBEDDING, StepKind.SPEECH_TO_TEXT, StepKind.TEXT_TO_SPEECH)
register(VectorSearch(), StepKind.VECTOR_SEARCH)
register(Tool(), StepKind.TOOL)
register(Compute(), StepKind.COMPUTE)
register(Table())
