#!/usr/bin/env bash
# `docker compose up`, for real: build the CPU images, run the two teacher replicas and two student
# jobs with their job tokens, check what they did (both replicas served both jobs: the students'
# round robin over the alias teacher-replicas), then `down -v`. CI runs it through
# tests/deploy/test_compose_smoke.py (part of scripts/test.sh).
#
#   bash scripts/compose_smoke.sh           # ~2.5 min with its caches, ~5 min on a fresh machine
#   bash scripts/compose_smoke.sh --purge   # remove what it keeps between runs, then exit
#
# Engine: Docker with the compose plugin when its daemon answers; otherwise rootful podman with
# podman-compose, installed here (Debian packages, podman-compose in its own venv). SMOKE_ENGINE
# (docker|podman) forces one. The compose file is the user's, unchanged; the stack runs as
# project `tropd-smoke` with images tagged `smoke-cpu`, on free loopback ports, and reads
# .env.example, not a .env of yours.
#
# The images are built with the Dockerfile's build arguments (see the Dockerfile's header), set
# from the environment when given, else:
#   PYTHON_IMAGE     podman: a Debian bookworm Python 3.11 root file system made by mmdebstrap from
#                    this host's Debian mirror and imported as localhost/tropd-smoke-python (no
#                    registry needed); Docker: the Dockerfile's python:3.11-slim-bookworm.
#   TORCH_CPU_INDEX  the Dockerfile's default when this host reaches it; else a loopback index of
#                    the CPU torch wheel (and its dependencies) that this host's pip downloads,
#                    built against with host networking.
#   EXTRA_CA_CERTS   the certificates this host trusts beyond Debian's packaged ones (a proxy that
#                    re-signs HTTPS); EXTRA_CA_CERTS_FILE names a PEM file instead.
#
# Kept between runs (a fresh machine rebuilds each when missing): the base image, the two smoke
# images (so an unchanged tree rebuilds from cache), and $SMOKE_CACHE (podman-compose's venv, the
# torch wheels). Never left behind: containers, volumes, networks, the loopback index, temp files.
# Exit status: 0 passed, 1 the stack failed a check, 3 the container engine could not be set up.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=tropd-smoke
TAG=smoke                                   # TROPD_VERSION: images tropd-*:smoke-cpu
PYTHON=${PYTHON:-python3}
SMOKE_CACHE=${SMOKE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tropd-compose-smoke}
BASE_IMAGE=localhost/tropd-smoke-python:3.11-bookworm
PODMAN_COMPOSE_VERSION=1.6.0                # Debian's 1.0.3 ignores `profiles`
STEPS=${SMOKE_STEPS:-5}
READY_TIMEOUT_S=${SMOKE_READY_TIMEOUT_S:-240}
RUN_TIMEOUT_S=${SMOKE_RUN_TIMEOUT_S:-600}   # both students, from `up` to their exits
BUILD_TIMEOUT_S=${SMOKE_BUILD_TIMEOUT_S:-1500}
LOCK_WAIT_S=${SMOKE_LOCK_WAIT_S:-1200}      # another smoke on this machine goes first

log() { echo "[smoke] $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
engine_fail() { log "CONTAINER ENGINE NOT SET UP: $*"; exit 3; }
now() { date +%s; }

mkdir -p "$SMOKE_CACHE"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tropd-smoke.XXXXXX")
INDEX_PID=""
STACK_UP=0
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ "$STACK_UP" = 1 ]; then
    if [ "$status" != 0 ]; then diagnose || true; fi
    take_down || status=1
  fi
  if [ -n "$INDEX_PID" ]; then kill "$INDEX_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One smoke at a time per machine: they share the image tags, the project name and 2 cores.
exec 9>"$SMOKE_CACHE/lock"
if ! flock -n 9; then
  log "another compose smoke runs on this machine; waiting up to ${LOCK_WAIT_S}s"
  flock -w "$LOCK_WAIT_S" 9 || fail "still locked after ${LOCK_WAIT_S}s: $SMOKE_CACHE/lock"
fi

case "${1:-}" in
  "") ;;
  --purge)
    log "removing the smoke images, the base image and $SMOKE_CACHE"
    if [ -f "$SMOKE_CACHE/containers.conf" ]; then export CONTAINERS_CONF="$SMOKE_CACHE/containers.conf"; fi
    for engine in docker podman; do
      command -v "$engine" >/dev/null || continue
      "$engine" rmi -f "tropd-teacher:$TAG-cpu" "tropd-trainer:$TAG-cpu" >/dev/null 2>&1 || true
    done
    if command -v podman >/dev/null; then podman rmi -f "$BASE_IMAGE" >/dev/null 2>&1 || true; fi
    rm -rf "$SMOKE_CACHE"
    exit 0 ;;
  *) echo "usage: bash scripts/compose_smoke.sh [--purge]" >&2; exit 2 ;;
esac

T_START=$(now)

# --- the engine ---------------------------------------------------------------------------------

setup_docker() {
  ENGINE=docker
  COMPOSE=(docker compose)
  COMPOSE_VERSION=$(docker compose version --short)
}

setup_podman() {
  ENGINE=podman
  local packages=(podman runc netavark aardvark-dns iptables mmdebstrap) missing=()
  local p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || engine_fail "podman needs the Debian packages ${missing[*]}; run as root to install them (or use Docker)"
    command -v apt-get >/dev/null || engine_fail "no Docker daemon, and no apt-get to install podman (${missing[*]})"
    log "installing ${missing[*]} (apt-get)"
    local aptlog="$WORK/apt.log"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update \
           && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; } \
         >"$aptlog" 2>&1; then
      tail -n 20 "$aptlog" >&2
      engine_fail "apt-get could not install ${missing[*]} (log above)"
    fi
  fi
  [ "$(id -u)" = 0 ] || engine_fail "the podman path runs rootful podman: run as root (or use Docker)"

  # This machine's settings (podman 4.3): its default ulimits (nofile 1048576) exceed the hard
  # limits here, so containers get the hard limits; crun refuses the hybrid cgroup v1 layout,
  # runc does not; no systemd, so cgroupfs and file logs.
  local nofile nproc
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
  nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] && nproc=32768
  [ "$nproc" -gt 32768 ] && nproc=32768
  cat >"$SMOKE_CACHE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
EOF
  export CONTAINERS_CONF="$SMOKE_CACHE/containers.conf"
  local info
  info=$(podman info 2>&1) || { echo "$info" | tail -n 20 >&2; engine_fail "\`podman info\` fails (above)"; }

  local venv="$SMOKE_CACHE/podman-compose"
  if [ "$("$venv/bin/podman-compose" version 2>/dev/null | sed -n 's/^podman-compose version //p')" != "$PODMAN_COMPOSE_VERSION" ]; then
    log "installing podman-compose $PODMAN_COMPOSE_VERSION in $venv"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv" || engine_fail "$PYTHON -m venv $venv failed"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "podman-compose==$PODMAN_COMPOSE_VERSION" 2>"$WORK/pip.log" \
      || { tail -n 20 "$WORK/pip.log" >&2; engine_fail "pip could not install podman-compose"; }
  fi
  # SHELL and HEALTHCHECK exist only in the docker image format; host networking reaches the
  # loopback torch index. podman-compose ignores compose's build.network, hence the flag.
  COMPOSE=("$venv/bin/podman-compose" --podman-build-args "--format docker --network host")
  COMPOSE_VERSION="podman-compose $PODMAN_COMPOSE_VERSION"
}

case "${SMOKE_ENGINE:-auto}" in
  docker) docker info >/dev/null 2>&1 || engine_fail "SMOKE_ENGINE=docker but \`docker info\` fails"
          docker compose version >/dev/null 2>&1 || engine_fail "SMOKE_ENGINE=docker but no \`docker compose\` plugin"
          setup_docker ;;
  podman) setup_podman ;;
  auto) if docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
          setup_docker
        else
          setup_podman
        fi ;;
  *) engine_fail "SMOKE_ENGINE must be docker, podman or auto, got '${SMOKE_ENGINE}'" ;;
esac
log "engine: $($ENGINE --version); compose: $COMPOSE_VERSION"

compose() {  # TIMEOUT_S COMMAND...: the compose file as the project tropd-smoke
  local timeout_s=$1
  shift
  timeout "$timeout_s" "${COMPOSE[@]}" -p "$PROJECT" --env-file .env.example -f docker-compose.yml \
    "${COMPOSE_FILES[@]}" "$@"
}
COMPOSE_FILES=()
project_containers() {
  $ENGINE ps -a -q --filter "label=com.docker.compose.project=$PROJECT" "$@"
}
service_container() {
  project_containers --filter "label=com.docker.compose.service=$1" | head -n 1
}

take_down() {
  log "compose down -v"
  compose 180 down -v --remove-orphans >"$WORK/down.log" 2>&1 \
    || { tail -n 20 "$WORK/down.log" >&2; log "compose down failed"; }
  STACK_UP=0
  local left
  left="$(project_containers)$($ENGINE volume ls -q | grep "^${PROJECT}_" || true)$($ENGINE network ls --format '{{.Name}}' | grep "^${PROJECT}_" || true)"
  if [ -n "$left" ]; then
    log "left behind after down -v: $(echo "$left" | tr '\n' ' ')"
    return 1
  fi
}

diagnose() {
  log "--- diagnostics: containers of $PROJECT"
  $ENGINE ps -a --filter "label=com.docker.compose.project=$PROJECT" >&2 || true
  local id
  for id in $(project_containers); do
    log "--- logs of $($ENGINE inspect -f '{{.Name}}' "$id") (last 40 lines)"
    $ENGINE logs --tail 40 "$id" >&2 2>&1 || true
  done
}

# --- build arguments ----------------------------------------------------------------------------

# The Debian base image: rebuilt when missing or when this recipe changes (label).
BASE_RECIPE="minbase python3 python3-venv ca-certificates passwd; venv /opt/python; v1"
make_base_image() {
  local recipe_id
  recipe_id=$(printf '%s' "$BASE_RECIPE" | sha256sum | cut -c1-16)
  if [ "$(podman image inspect -f '{{index .Labels "org.tropd.recipe"}}' "$BASE_IMAGE" 2>/dev/null)" = "$recipe_id" ]; then
    log "base image $BASE_IMAGE: cached"
    return
  fi
  # This host's Debian sources (its mirror, with updates and security) when it has them.
  local mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
  if [ -z "${DEBIAN_MIRROR:-}" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
    mirror=/etc/apt/sources.list.d/debian.sources
  fi
  log "making $BASE_IMAGE with mmdebstrap from $mirror"
  # Documentation is left out but for the copyright files; apt's lists and caches are dropped.
  # shellcheck disable=SC2016  # the hooks' "$1" is the root file system, expanded by mmdebstrap
  if ! mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook='chroot "$1" python3 -m venv /opt/python' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      bookworm "$WORK/rootfs.tar" "$mirror" >"$WORK/mmdebstrap.log" 2>&1; then
    tail -n 20 "$WORK/mmdebstrap.log" >&2
    engine_fail "mmdebstrap could not make the base root file system (log above)"
  fi
  # Like python:3.11-slim: python and pip on PATH (a venv, so pip installs system-wide freely).
  podman import --quiet \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    --change "LABEL org.tropd.recipe=$recipe_id" \
    "$WORK/rootfs.tar" "$BASE_IMAGE" >/dev/null || engine_fail "podman import of the base image failed"
  rm -f "$WORK/rootfs.tar"
}

# Certificates in this host's bundle that no Debian package ships: a proxy's own CA, typically.
host_extra_cas() {
  "$PYTHON" - <<'EOF'
import pathlib, re
pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
bundle = pathlib.Path("/etc/ssl/certs/ca-certificates.crt")
packaged_dir = pathlib.Path("/usr/share/ca-certificates")
if bundle.is_file() and packaged_dir.is_dir():
    key = lambda cert: "".join(cert.split())
    packaged = {key(c) for p in packaged_dir.rglob("*.crt") for c in pem.findall(p.read_text())}
    print("\n".join(c for c in pem.findall(bundle.read_text()) if key(c) not in packaged))
EOF
}

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A PEP 503 index on loopback: the CPU torch wheel and its dependencies, from this host's pip.
serve_torch_index() {
  local version wheels="$SMOKE_CACHE/torch-wheels" port
  version=$(sed -n 's/^ARG TORCH_VERSION=//p' Dockerfile)
  log "downloading torch==$version and its dependencies with this host's pip"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --dest "$wheels" "torch==$version" 2>"$WORK/pip-download.log" \
    || { tail -n 20 "$WORK/pip-download.log" >&2; fail "pip could not download torch==$version"; }
  compgen -G "$wheels/torch-$version+cpu-*.whl" >/dev/null || fail "this host's pip gave no CPU \
build of torch $version (only: $(cd "$wheels" && echo torch-*)); set TORCH_CPU_INDEX to an index with it"
  "$PYTHON" - "$wheels" "$WORK/index" <<'EOF'
import pathlib, re, sys
wheels, index = map(pathlib.Path, sys.argv[1:])
for wheel in wheels.glob("*.whl"):
    project = index / re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    project.mkdir(parents=True, exist_ok=True)
    (project / wheel.name).symlink_to(wheel.resolve())
EOF
  # A fixed port keeps the build cache (the index URL is a build argument); another if taken.
  port=${SMOKE_INDEX_PORT:-38451}
  if ! "$PYTHON" -c "import socket,sys; socket.create_server(('127.0.0.1', $port)).close()" 2>/dev/null; then
    port=$(free_port)
    log "port ${SMOKE_INDEX_PORT:-38451} is taken: the index moves to $port (the torch layer rebuilds)"
  fi
  "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$WORK/index" "$port" >"$WORK/index.log" 2>&1 &
  INDEX_PID=$!
  TORCH_CPU_INDEX="http://127.0.0.1:$port/"
  for _ in $(seq 50); do
    "$PYTHON" -c "import urllib.request; urllib.request.urlopen('${TORCH_CPU_INDEX}torch/', timeout=2)" \
      2>/dev/null && return
    sleep 0.2
  done
  fail "the loopback torch index did not answer on $TORCH_CPU_INDEX"
}

if [ -z "${PYTHON_IMAGE:-}" ] && [ "$ENGINE" = podman ]; then
  make_base_image
  PYTHON_IMAGE=$BASE_IMAGE
fi
if [ -z "${TORCH_CPU_INDEX:-}" ]; then
  default_index=$(sed -n 's/^ARG TORCH_CPU_INDEX=//p' Dockerfile)
  if "$PYTHON" -c "import urllib.request; urllib.request.urlopen('${default_index%/}/torch/', timeout=10)" 2>/dev/null; then
    TORCH_CPU_INDEX=$default_index
  else
    serve_torch_index
    if [ "$ENGINE" = docker ]; then
      # Docker: the build's RUN steps reach the loopback index through the host's network.
      printf 'services:\n' >"$WORK/build-network.yml"
      for s in teacher teacher-2 student-a student-b; do
        printf '  %s:\n    build:\n      network: host\n' "$s" >>"$WORK/build-network.yml"
      done
      COMPOSE_FILES=(-f "$WORK/build-network.yml")
    fi
  fi
fi
if [ -z "${EXTRA_CA_CERTS:-}" ]; then
  if [ -n "${EXTRA_CA_CERTS_FILE:-}" ]; then
    EXTRA_CA_CERTS=$(cat "$EXTRA_CA_CERTS_FILE")
  else
    EXTRA_CA_CERTS=$(host_extra_cas)
  fi
fi
if [ -n "${PYTHON_IMAGE:-}" ]; then export PYTHON_IMAGE; fi
if [ -n "${PIP_INDEX_URL:-}" ]; then export PIP_INDEX_URL; fi
export TORCH_CPU_INDEX EXTRA_CA_CERTS
log "build arguments: PYTHON_IMAGE=${PYTHON_IMAGE:-(Dockerfile default)} TORCH_CPU_INDEX=$TORCH_CPU_INDEX" \
  "PIP_INDEX_URL=${PIP_INDEX_URL:-(Dockerfile default)} EXTRA_CA_CERTS=$(grep -c 'BEGIN CERTIFICATE' <<<"$EXTRA_CA_CERTS" || true) certificate(s)"

# What the stack is run with (compose variables; the shell's win over .env.example).
export TROPD_VERSION=$TAG STUDENT_STEPS=$STEPS TEACHER_BIND=127.0.0.1
TEACHER_GRPC_PORT=$(free_port)
TEACHER_HTTP_PORT=$(free_port)
export TEACHER_GRPC_PORT TEACHER_HTTP_PORT
T_SETUP=$(now)

# --- build --------------------------------------------------------------------------------------

# A stack left by an interrupted run goes first.
if [ -n "$(project_containers)" ]; then
  log "removing a $PROJECT stack left by an earlier run"
  take_down || fail "could not remove the old stack"
fi

image_id() { $ENGINE image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
OLD_IDS="$(image_id "tropd-teacher:$TAG-cpu") $(image_id "tropd-trainer:$TAG-cpu")"
# One after the other: built side by side, the two would each build the shared stages (twice the
# work on 2 cores, and two cache chains, so the next run rebuilds one of them).
for s in teacher student-a; do
  log "compose build $s"
  if ! compose "$BUILD_TIMEOUT_S" build "$s" >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log" >&2
    fail "compose build $s failed (last lines above)"
  fi
done
# The images these tags pointed at before, now unused: gone, so rebuilds do not pile up.
for old in $OLD_IDS; do
  case " $(image_id "tropd-teacher:$TAG-cpu") $(image_id "tropd-trainer:$TAG-cpu") " in
    *" $old "*) ;;
    *) $ENGINE rmi "$old" >/dev/null 2>&1 || true ;;
  esac
done
T_BUILD=$(now)

# --- run ----------------------------------------------------------------------------------------

http_get() {  # URL -> body on stdout; fails on a non-2xx status
  "$PYTHON" -c "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())" "$1"
}

log "compose up -d: teacher, teacher-2, student-a, student-b ($STEPS steps each)"
STACK_UP=1
compose 300 up -d >"$WORK/up.log" 2>&1 || { tail -n 30 "$WORK/up.log" >&2; fail "compose up failed"; }
TEACHER=$(service_container teacher)
TEACHER_2=$(service_container teacher-2)
if [ -z "$TEACHER" ] || [ -z "$TEACHER_2" ]; then fail "a teacher replica has no container after compose up"; fi

# The teacher's readiness over its published HTTP port (podman 4.3 without systemd never runs the
# health check, and ignores depends_on: service_healthy: the students wait for the teacher).
deadline=$(( $(now) + READY_TIMEOUT_S ))
until body=$(http_get "http://127.0.0.1:$TEACHER_HTTP_PORT/readyz" 2>/dev/null) && [[ "$body" == *'"ready"'* ]]; do
  [ "$($ENGINE inspect -f '{{.State.Running}}' "$TEACHER")" = true ] || fail "the teacher container stopped"
  [ "$(now)" -lt "$deadline" ] || fail "the teacher's /readyz did not answer ready within ${READY_TIMEOUT_S}s"
  sleep 2
done
log "teacher ready after $(( $(now) - T_BUILD ))s: /readyz $body"
# The second replica publishes no port: its gRPC health from inside its container.
until $ENGINE exec "$TEACHER_2" tropd-teacher health --target localhost:50051 >/dev/null 2>&1; do
  [ "$($ENGINE inspect -f '{{.State.Running}}' "$TEACHER_2")" = true ] || fail "the teacher-2 container stopped"
  [ "$(now)" -lt "$deadline" ] || fail "teacher-2 was not SERVING within ${READY_TIMEOUT_S}s"
  sleep 2
done
log "teacher-2 ready after $(( $(now) - T_BUILD ))s"

# gRPC health, as the image's health check runs it, and from the host over the published port.
$ENGINE exec "$TEACHER" tropd-teacher health --target localhost:50051 \
  || fail "gRPC health inside the teacher container is not SERVING"
$ENGINE run --rm --no-healthcheck --network host "tropd-teacher:$TAG-cpu" \
  tropd-teacher health --target "127.0.0.1:$TEACHER_GRPC_PORT" \
  || fail "gRPC health on the published port 127.0.0.1:$TEACHER_GRPC_PORT is not SERVING"

# Both students run to their end. A failing one is restarted by its policy (on-failure:3).
deadline=$(( $(now) + RUN_TIMEOUT_S ))
while :; do
  done_count=0
  for s in student-a student-b; do
    id=$(service_container "$s")
    [ -n "$id" ] || fail "no $s container"
    read -r status code restarts < <($ENGINE inspect -f '{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}' "$id")
    if [ "$status" = exited ] && [ "$code" = 0 ]; then
      done_count=$((done_count + 1))
    elif [ "$status" = exited ] && [ "$restarts" -ge 3 ]; then
      fail "$s exited with status $code after $restarts restarts"
    fi
  done
  [ "$done_count" = 2 ] && break
  for id in "$TEACHER" "$TEACHER_2"; do
    [ "$($ENGINE inspect -f '{{.State.Running}}' "$id")" = true ] || fail "a teacher container stopped"
  done
  [ "$(now)" -lt "$deadline" ] || fail "the students did not both finish within ${RUN_TIMEOUT_S}s"
  sleep 3
done
T_RUN=$(now)
log "both students exited 0 after $(( T_RUN - T_BUILD ))s"

# Each replica's /metrics, read inside its container (teacher-2 publishes no port): both
# replicas served Score calls of both jobs, each under its own token's job name, none anonymous.
replica_metrics() {  # CONTAINER -> its /metrics text
  $ENGINE exec "$1" python -c \
    "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/metrics', timeout=5).read().decode())"
}
metric_sum() {  # PATTERN (a sed regex of the series, before the value) METRICS -> the sum
  sed -n "s/^$1 //p" <<<"$2" | "$PYTHON" -c "import sys; print(sum(float(v) for v in sys.stdin))"
}
positive() { "$PYTHON" -c "import sys; sys.exit(float(sys.argv[1]) <= 0)" "$1"; }
for replica in teacher teacher-2; do
  id=$(service_container "$replica")
  metrics=$(replica_metrics "$id") || fail "the /metrics of $replica did not answer"
  grep -q "^teacher_info{replica=\"$replica\"} 1" <<<"$metrics" || fail "$replica: no teacher_info{replica=\"$replica\"}"
  for s in student-a student-b; do
    calls=$(metric_sum "teacher_job_requests_total{job=\"$s\",method=\"Score\",status=\"OK\"}" "$metrics")
    scored=$(metric_sum "teacher_job_scored_tokens_total{job=\"$s\"}" "$metrics")
    if ! positive "$calls" || ! positive "$scored"; then fail "$replica served no Score calls of job $s"; fi
    log "$replica scored $scored positions in $calls Score calls of job $s"
  done
  if grep -q '^teacher_job_scored_tokens_total{job="anonymous"}' <<<"$metrics"; then
    fail "$replica served calls without a job token (job anonymous)"
  fi
done
# Each student's last checkpoint is in the runs volume, written as uid 10001.
$ENGINE run --rm -v "${PROJECT}_runs:/runs:ro" "tropd-trainer:$TAG-cpu" bash -c "
  ls -d /runs/student-a/checkpoints/step-$(printf '%06d' "$STEPS") /runs/student-b/checkpoints/step-$(printf '%06d' "$STEPS")" \
  >&2 || fail "a student's final checkpoint (step $STEPS) is missing from the runs volume"

take_down || fail "compose down -v left things behind"
T_END=$(now)

sizes=$($ENGINE image inspect -f '{{.Size}}' "tropd-teacher:$TAG-cpu" "tropd-trainer:$TAG-cpu" | tr '\n' ' ')
read -r teacher_size trainer_size <<<"$sizes"
log "passed: engine=$ENGINE setup_s=$((T_SETUP - T_START)) build_s=$((T_BUILD - T_SETUP))" \
  "run_s=$((T_RUN - T_BUILD)) down_s=$((T_END - T_RUN)) total_s=$((T_END - T_START))" \
  "teacher_image_mb=$((teacher_size / 1000000)) trainer_image_mb=$((trainer_size / 1000000))"
