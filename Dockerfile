# AgentGraph's two images, from one Dockerfile:
#   docker build --target operator -t agentgraph-operator:0.1.0 .   the operator (the default)
#   docker build --target runtime  -t agentgraph-runtime:0.1.0 .    gateways and step workers
# Multi-stage: a build stage makes a virtualenv with the package and its dependencies (the
# runtime's adds the `runtime` extra: onnxruntime, faiss, the embedding model); the final stages
# copy only a venv onto the same pinned base and run as a non-root user.
# The base is pinned by version; for reproducible builds also pin its digest, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m venv /opt/agentgraph \
    && /opt/agentgraph/bin/pip install --no-compile . \
    && /opt/agentgraph/bin/python -m compileall -q /opt/agentgraph
RUN python -m venv /opt/agentgraph-runtime \
    && /opt/agentgraph-runtime/bin/pip install --no-compile '.[runtime]' \
    && /opt/agentgraph-runtime/bin/python -m compileall -q /opt/agentgraph-runtime

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="agentgraph-runtime" \
      org.opencontainers.image.description="An AgentGraph's gateway and reference step workers (agentgraph gateway | agentgraph worker)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/agentgraph-runtime /opt/agentgraph
ENV PATH=/opt/agentgraph/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 9090
# The operator's pods set the command (agentgraph) and the role: gateway, or worker --kind K.
ENTRYPOINT ["agentgraph"]

FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="agentgraph-operator" \
      org.opencontainers.image.description="Places AI-agent graphs on heterogeneous node pools at the lowest cost that meets their SLA" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/agentgraph /opt/agentgraph
COPY hardware_profiles/ /opt/agentgraph/hardware_profiles/
ENV PATH=/opt/agentgraph/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AGENTGRAPH_PROFILES=/opt/agentgraph/hardware_profiles
# The same uid/gid the chart's securityContext sets (runAsNonRoot needs a numeric user).
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "agentgraph.controller"]
