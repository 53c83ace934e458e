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
#
# Behind a proxy, or with no registry (all optional; with a registry and open HTTPS none is needed):
#   --build-arg PYTHON_IMAGE=...     another Debian-based Python 3.11 image with pip on PATH (a
#                                    mirror's copy; scripts/compose_smoke.sh makes one with mmdebstrap)
#   --build-arg PIP_INDEX_URL=...    a PyPI mirror: everything but the CPU torch wheel
#   --build-arg TORCH_CPU_INDEX=...  an index with the CPU torch wheel and its dependencies
#   --build-arg EXTRA_CA_CERTS="$(cat corp-ca.pem)"
#                                    PEM text of CA certificates to trust beyond Debian's, for a
#                                    network whose HTTPS is re-signed by its own CA

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG PIP_INDEX_URL=https://pypi.org/simple

# What every image shares: Python, pip's settings, the trusted CAs and the tropd user.
FROM ${PYTHON_IMAGE} AS python
ARG EXTRA_CA_CERTS=""
# pip, requests and httpx bring their own CA list (certifi): point them at the system bundle, so
# that an extra CA reaches them too, while building and at run time (hub downloads).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# One file per certificate: update-ca-certificates links each by its hash (for OpenSSL's CA
# directory) besides adding it to the bundle, and skips files holding more than one.
RUN if [ -n "${EXTRA_CA_CERTS}" ]; then \
      printf '%s\n' "${EXTRA_CA_CERTS}" \
      | csplit --quiet --elide-empty-files --prefix /usr/local/share/ca-certificates/tropd-extra- \
        --suffix-format '%02d.crt' - '/-----BEGIN CERTIFICATE-----/' '{*}' \
      && update-ca-certificates; \
    fi
# A fixed uid/gid so that Kubernetes' runAsUser and fsGroup can name it (10001, as in the chart).
RUN groupadd --system --gid 10001 tropd \
    && useradd --system --uid 10001 --gid tropd --home-dir /home/tropd --create-home tropd


FROM python AS base
ARG ACCELERATOR=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL
ENV HF_HOME=/cache/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib \
    TROPD_WORLD_DIR=/opt/tropd/worlds/builtin
RUN mkdir -p /cache /runs && chown tropd:tropd /cache /runs

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
ARG PIP_INDEX_URL
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
ARG PIP_INDEX_URL
RUN pip install -e ".[trainer]"
USER 10001:10001
VOLUME ["/runs"]
# The trainer's HTTP status port (/livez, /metrics, /v1/status) when train.status_port=8081.
EXPOSE 8081
CMD ["tropd-train", "--help"]


# The TGI-backed teacher: scores through a text-generation-inference server, so no torch and no
# transformers (the text-generation client pins huggingface-hub<1.0, which transformers 5
# refuses; see the README). Built from the `python` stage, not from `base`. TEACHER_MODEL
# names a folder with the tokenizer files of TGI's model; TEACHER_TGI_URL the TGI server.
FROM python AS teacher-tgi
ARG PIP_INDEX_URL
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
