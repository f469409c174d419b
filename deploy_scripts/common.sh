# shellcheck shell=bash
# Shared settings and helpers for the deploy scripts. Source it; do not run it.
#
# Every setting can be overridden from the environment, so the tests (and a second stack on
# the same machine) run on their own ports and run folder:
#
#   HIPPO_RUN_DIR        run folder: generated configs, PID files, logs, Orthanc storage (run/)
#   ORTHANC_AET          Orthanc's AE title (ORTHANC)
#   ORTHANC_HOST         address the node and the tools use to reach Orthanc (127.0.0.1)
#   ORTHANC_DICOM_PORT   Orthanc's DICOM port (4242)
#   ORTHANC_HTTP_PORT    Orthanc's HTTP port, REST + DICOMweb at /dicom-web (8042)
#   ORTHANC_STABLE_AGE   seconds without new instance before a series is "stable" (2)
#   ORTHANC_ALLOW_MOVE   true: the node may also C-MOVE (priors.retrieve: move) (false)
#   ORTHANC_ROUTING      instance (route_dicoms_per_instance.lua: each image forwarded as it is
#                        stored), series (route_dicoms.lua: each series once Orthanc finds it
#                        stable) or none (no routing script) (instance; docs/operations.md)
#   ORTHANC_ASSOCIATION_CLOSE_DELAY  seconds Orthanc keeps an idle outgoing association open;
#                        with ORTHANC_ROUTING=instance the node sees the release (and starts
#                        its release grace) this long after the last routed instance (1)
#   ORTHANC_STORAGE_DIR  Orthanc's storage + index folder ($HIPPO_RUN_DIR/orthanc-storage)
#   HIPPO_ROUTE_SERIES   Orthanc sends the node only series with one of these comma-separated
#                        SeriesDescriptions (any case), e.g. HippoCrop; empty = every image
#                        series; auto = what `hippo-scp route-filter` derives from the node's
#                        selection rules in $HIPPO_CONFIG (every series if they name none) (auto)
#   HIPPO_AET            the node's AE title (HIPPOAI)
#   HIPPO_HOST           address Orthanc uses to reach the node (127.0.0.1)
#   HIPPO_PORT           the node's DICOM port (11112)
#   HIPPO_SETTLE         the node's --settle seconds (3)
#   HIPPO_PRIORS         on: the node compares with earlier results it asks Orthanc for
#                        (serve --priors; Orthanc grants it C-FIND / C-GET); off: the
#                        config's priors.enabled decides (on)
#   HIPPO_CONFIG         the node's ae_config.yaml (<repo>/ae_config.yaml when present)
#   HIPPO_WEIGHTS        model weights to use instead of the configured ones (optional)
#   SCANNER_AET          calling AE title of send_volume.sh, registered in Orthanc (SCANNER)
#   OHIF_PORT            port of the OHIF viewer + /dicom-web proxy (3000)
#   OHIF_BIND            address the OHIF server binds (127.0.0.1)
#   READY_TIMEOUT        seconds to wait for a service to become ready (60)

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$DEPLOY_DIR/.." && pwd)"
export DEPLOY_DIR REPO_ROOT

: "${HIPPO_RUN_DIR:=$REPO_ROOT/run}"
: "${ORTHANC_AET:=ORTHANC}"
: "${ORTHANC_HOST:=127.0.0.1}"
: "${ORTHANC_DICOM_PORT:=4242}"
: "${ORTHANC_HTTP_PORT:=8042}"
: "${ORTHANC_STABLE_AGE:=2}"
: "${ORTHANC_ALLOW_MOVE:=false}"
: "${ORTHANC_ROUTING:=instance}"
: "${ORTHANC_ASSOCIATION_CLOSE_DELAY:=1}"
: "${ORTHANC_STORAGE_DIR:=$HIPPO_RUN_DIR/orthanc-storage}"
: "${HIPPO_ROUTE_SERIES=auto}"  # set but empty: every image series
: "${ORTHANC_BIN:=/usr/sbin/Orthanc}"
: "${ORTHANC_PLUGIN_DIR:=/usr/share/orthanc/plugins}"
: "${HIPPO_AET:=HIPPOAI}"
: "${HIPPO_HOST:=127.0.0.1}"
: "${HIPPO_PORT:=11112}"
: "${HIPPO_SETTLE:=3}"
: "${HIPPO_PRIORS:=on}"
: "${HIPPO_CONFIG:=$REPO_ROOT/ae_config.yaml}"
: "${SCANNER_AET:=SCANNER}"
: "${OHIF_PORT:=3000}"
: "${OHIF_BIND:=127.0.0.1}"
: "${OHIF_DIST:=$DEPLOY_DIR/ohif/node_modules/@ohif/app/dist}"
: "${READY_TIMEOUT:=60}"
: "${VENV:=$REPO_ROOT/.venv}"
# Run folder as an absolute path (tests may pass a relative one).
mkdir -p "$HIPPO_RUN_DIR"
HIPPO_RUN_DIR="$(cd "$HIPPO_RUN_DIR" && pwd)"
export HIPPO_RUN_DIR ORTHANC_AET ORTHANC_HOST ORTHANC_DICOM_PORT ORTHANC_HTTP_PORT \
  ORTHANC_STABLE_AGE ORTHANC_ALLOW_MOVE ORTHANC_ROUTING ORTHANC_ASSOCIATION_CLOSE_DELAY ORTHANC_STORAGE_DIR ORTHANC_BIN ORTHANC_PLUGIN_DIR \
  HIPPO_ROUTE_SERIES HIPPO_AET HIPPO_HOST HIPPO_PORT HIPPO_SETTLE HIPPO_PRIORS HIPPO_CONFIG SCANNER_AET OHIF_PORT OHIF_BIND \
  OHIF_DIST READY_TIMEOUT VENV

ORTHANC_URL="http://127.0.0.1:${ORTHANC_HTTP_PORT}"
OHIF_URL="http://127.0.0.1:${OHIF_PORT}"
export ORTHANC_URL OHIF_URL

# Python with the project installed (the venv), falling back to the system python3 for the
# scripts that only need the standard library.
if [[ -x "$VENV/bin/python" ]]; then
  PYTHON="$VENV/bin/python"
else
  PYTHON="$(command -v python3 || true)"
fi
export PYTHON

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

need_cmd() {
  local cmd
  for cmd in "$@"; do
    command -v "$cmd" >/dev/null 2>&1 \
      || die "'$cmd' not found; run deploy_scripts/install.sh first"
  done
}

# wait_until TIMEOUT_S DESCRIPTION COMMAND... : poll COMMAND every 0.25 s until it succeeds.
wait_until() {
  local timeout="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for: $what"
      return 1
    fi
    sleep 0.25
  done
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

http_ok() { curl -fsS -o /dev/null --max-time 5 "$1"; }

pid_file() { printf '%s/%s.pid' "$HIPPO_RUN_DIR" "$1"; }
log_file() { printf '%s/%s.log' "$HIPPO_RUN_DIR" "$1"; }

# service_pid NAME: print the PID of a running service started by these scripts.
service_pid() {
  local file pid
  file="$(pid_file "$1")"
  [[ -s "$file" ]] || return 1
  pid="$(<"$file")"
  kill -0 "$pid" 2>/dev/null || return 1
  printf '%s' "$pid"
}

# start_service NAME COMMAND... : run COMMAND in its own session, log to run/NAME.log,
# PID in run/NAME.pid. Fails if the service already runs from this run folder.
start_service() {
  local name="$1"
  shift
  local pid
  if pid="$(service_pid "$name")"; then
    die "$name already runs (PID $pid, $(pid_file "$name")); stop it first (deploy_scripts/stop_stack.sh)"
  fi
  setsid "$@" >>"$(log_file "$name")" 2>&1 </dev/null &
  echo "$!" >"$(pid_file "$name")"
  log "started $name (PID $!), log: $(log_file "$name")"
}

# stop_service NAME: SIGTERM, wait up to 20 s, then SIGKILL. Quiet when not running.
stop_service() {
  local name="$1" pid
  if ! pid="$(service_pid "$name")"; then
    rm -f "$(pid_file "$name")"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "$name (PID $pid) ignored SIGTERM for 20 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$(pid_file "$name")"
  log "stopped $name (PID $pid)"
}

# ensure_running NAME: fail with the log's tail when the service died during start-up.
ensure_running() {
  local name="$1"
  if ! service_pid "$name" >/dev/null; then
    log "$name exited during start-up; last lines of $(log_file "$name"):"
    tail -n 30 "$(log_file "$name")" >&2 || true
    exit 1
  fi
}

# fail_if_port_busy PORT WHAT: refuse to start when someone else holds the port (e.g. the
# Debian orthanc service on 4242/8042).
fail_if_port_busy() {
  if port_open "$1"; then
    die "port $1 ($2) is already in use on this machine (a system Orthanc service? another stack?); stop it or choose another port via the environment (see deploy_scripts/common.sh)"
  fi
}

# resolve_route_series: HIPPO_ROUTE_SERIES=auto -> the SeriesDescriptions the node's selection
# rules analyse (hippo-scp route-filter), so Orthanc's filter cannot drift from the node's rules.
# Without the node installed (the Orthanc container) or config, auto routes every image series.
resolve_route_series() {
  [[ "$HIPPO_ROUTE_SERIES" == auto ]] || return 0
  HIPPO_ROUTE_SERIES=""
  if [[ -x "$VENV/bin/hippo-scp" && -f "$HIPPO_CONFIG" ]]; then
    HIPPO_ROUTE_SERIES="$("$VENV/bin/hippo-scp" route-filter --config "$HIPPO_CONFIG" 2>/dev/null)" \
      || die "hippo-scp route-filter --config $HIPPO_CONFIG failed (check-config says why)"
  fi
  if [[ -n "$HIPPO_ROUTE_SERIES" ]]; then
    log "routing to $HIPPO_AET only series described as: $HIPPO_ROUTE_SERIES (from the selection rules of $HIPPO_CONFIG)"
  else
    log "routing every image series to $HIPPO_AET (HIPPO_ROUTE_SERIES=auto: no description list from $HIPPO_CONFIG)"
  fi
  export HIPPO_ROUTE_SERIES
}

# render_orthanc_config OUTPUT: orthanc.json from orthanc.json.template and the environment,
# with the Lua routing script chosen by $ORTHANC_ROUTING (series | instance | none).
render_orthanc_config() {
  local lua
  case "$ORTHANC_ROUTING" in
    series) lua="$DEPLOY_DIR/route_dicoms.lua" ;;
    instance) lua="$DEPLOY_DIR/route_dicoms_per_instance.lua" ;;
    none) lua="" ;;
    *) die "ORTHANC_ROUTING must be series, instance or none (got '$ORTHANC_ROUTING')" ;;
  esac
  if [[ -n "$lua" ]]; then
    # route_common.lua first: both routers use what it defines (one Lua context in Orthanc)
    ORTHANC_LUA_SCRIPTS="[\"$DEPLOY_DIR/route_common.lua\", \"$lua\"]"
  else
    ORTHANC_LUA_SCRIPTS="[]"
  fi
  # Listen on every interface only when asked (docker-compose does); loopback otherwise.
  : "${ORTHANC_REMOTE_ACCESS:=false}"
  resolve_route_series
  # HIPPO_ROUTE_SERIES "A, B" -> ["A", "B"] for HippoScp.RouteSeriesDescriptions
  HIPPO_ROUTE_SERIES_JSON="$(python3 -c 'import json, sys
print(json.dumps([s.strip() for s in sys.argv[1].split(",") if s.strip()]))' "$HIPPO_ROUTE_SERIES")"
  export ORTHANC_LUA_SCRIPTS ORTHANC_REMOTE_ACCESS HIPPO_ROUTE_SERIES_JSON
  mkdir -p "$ORTHANC_STORAGE_DIR"
  python3 "$DEPLOY_DIR/render_orthanc_config.py" "$DEPLOY_DIR/orthanc.json.template" "$1"
}
