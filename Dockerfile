# The AgentGraph operator image. Build: docker build -t agentgraph-operator:0.1.0 .
# Multi-stage: the build stage makes a virtualenv with the package and its dependencies; the
# runtime stage copies only that venv onto the same pinned base and runs as a non-root user.
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

FROM ${PYTHON_IMAGE}
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
