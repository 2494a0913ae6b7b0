# Production image of the message gateway: one image, three processes
# (`gateway serve`, `gateway worker`, `gateway dispatch`); see docker-compose.yml and docs/deployment.md.
# Healthchecks live in docker-compose.yml, per service: only `serve` has an HTTP endpoint.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the package (no dev/embedded extras) into a self-contained virtualenv ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/gateway
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY plugins/ plugins/
# Optional extras, e.g. --build-arg GATEWAY_EXTRAS=[otel] for OpenTelemetry traces (docs/tracing.md).
ARG GATEWAY_EXTRAS=""
RUN /opt/gateway/bin/pip install --no-cache-dir ".${GATEWAY_EXTRAS}"

# --- runtime: the virtualenv only, no sources, no build tools, non-root ------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/gateway
# The config is mounted at /etc/gateway/gateway.toml and named by GATEWAY_CONFIG (or --config).
COPY --from=build /opt/gateway /opt/gateway
USER 10001:10001
WORKDIR /
# Inside a container [http] host must be "0.0.0.0" (the default 127.0.0.1 is unreachable from outside).
EXPOSE 8080
ENTRYPOINT ["gateway"]
CMD ["serve"]
