# syntax=docker/dockerfile:1
# tropd images: the teacher service and the student trainer, each with CPU or CUDA torch.
#
#   docker build --target teacher -t tropd-teacher:0.1.0-cpu .
#   docker build --target teacher --build-arg ACCELERATOR=cuda -t tropd-teacher:0.1.0-cuda .
#   docker build --target trainer -t tropd-trainer:0.1.0-cpu .
#   docker build --target trainer --build-arg ACCELERATOR=cuda -t tropd-trainer:0.1.0-cuda .
#   docker build --target teacher-tgi -t tropd-teacher-tgi:0.1.0-cpu .
#
# ACCELERATOR=cuda installs torch's default Linux wheel, which bundles the CUDA runtime, so the
# base stays python-slim and the host only needs the NVIDIA driver and container toolkit.
# ACCELERATOR=cpu takes the CPU-only wheel from TORCH_CPU_INDEX (a fraction of the size).
# No secrets are baked in: job tokens and hub tokens come from the environment or mounted files.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ARG ACCELERATOR=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib \
    TROPD_WORLD_DIR=/opt/tropd/worlds/builtin
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A fixed uid/gid so that Kubernetes' runAsUser and fsGroup can name it (10001, as in the chart).
RUN groupadd --system --gid 10001 tropd \
    && useradd --system --uid 10001 --gid tropd --home-dir /home/tropd --create-home tropd \
    && mkdir -p /cache /runs \
    && chown tropd:tropd /cache /runs

# torch first, in its own layer: the largest download and the one that changes least often.
RUN case "${ACCELERATOR}" in \
      cpu) pip install --index-url "${TORCH_CPU_INDEX}" "torch==${TORCH_VERSION}" ;; \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      *) echo "ACCELERATOR must be cpu or cuda, got '${ACCELERATOR}'" >&2; exit 1 ;; \
    esac

# The source tree is installed in place (editable) so that paths relative to the checkout, such
# as the built-in world (builtin:teacher, builtin:student) and configs/, resolve as in a clone.
WORKDIR /opt/tropd
COPY pyproject.toml README.md ./
COPY services/ services/
COPY configs/ configs/
COPY worlds/builtin/ worlds/builtin/


FROM base AS teacher
RUN pip install -e ".[teacher]"
# Defaults for `docker run`: the built-in teacher on CPU. Compose and the Helm chart set these.
# The container listens on every interface (the teacher's own default is loopback), so it
# starts only with a tokens file (TEACHER_TOKENS_FILE) or TEACHER_ALLOW_ANONYMOUS=true.
ENV TEACHER_MODEL=/opt/tropd/worlds/builtin/teacher \
    TEACHER_HOST=0.0.0.0 \
    TEACHER_PORT=50051 \
    TEACHER_HTTP_PORT=8080
USER 10001:10001
VOLUME ["/cache"]
EXPOSE 50051 8080
# The service's own gRPC health check (grpc.health.v1); SERVING only once the model is loaded.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/bin/sh", "-c", "exec tropd-teacher health --target localhost:${TEACHER_PORT}"]
CMD ["tropd-teacher", "serve"]


FROM base AS trainer
RUN pip install -e ".[trainer]"
USER 10001:10001
VOLUME ["/runs"]
# The trainer's HTTP status port (/livez, /metrics, /v1/status) when train.status_port=8081.
EXPOSE 8081
CMD ["tropd-train", "--help"]


# The TGI-backed teacher: scores through a text-generation-inference server, so no torch and no
# transformers (the text-generation client pins huggingface-hub<1.0, which transformers 5
# refuses; see the README). Built from the slim Python image, not from `base`. TEACHER_MODEL
# names a folder with the tokenizer files of TGI's model; TEACHER_TGI_URL the TGI server.
FROM ${PYTHON_IMAGE} AS teacher-tgi
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --system --gid 10001 tropd \
    && useradd --system --uid 10001 --gid tropd --home-dir /home/tropd --create-home tropd
COPY pyproject.toml README.md /opt/tropd/
COPY services/ /opt/tropd/services/
RUN pip install "/opt/tropd[tgi]"
ENV TEACHER_BACKEND=tgi \
    TEACHER_MODEL=/models/tokenizer \
    TEACHER_HOST=0.0.0.0 \
    TEACHER_PORT=50051 \
    TEACHER_HTTP_PORT=8080
USER 10001:10001
EXPOSE 50051 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "exec tropd-teacher health --target localhost:${TEACHER_PORT}"]
CMD ["tropd-teacher", "serve"]
