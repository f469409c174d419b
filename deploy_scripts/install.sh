#!/usr/bin/env bash
# Install everything the demo and the tests need; idempotent, and fast when all is present.
#
#   bash deploy_scripts/install.sh [--no-apt] [--no-python] [--no-ohif]
#
#   apt     dcmtk, orthanc, orthanc-dicomweb, chromium, fonts-dejavu-core, shellcheck,
#           python3-venv, curl (+ npm when the OHIF step needs it). Services are NOT started
#           (policy-rc.d), and a running system Orthanc service is stopped: our scripts start
#           Orthanc as a plain process with their own configuration.
#   python  .venv with `pip install -r requirements.lock` + `pip install --no-deps -e .`
#           (torch from the CPU wheel index) + requirements-browser.txt (playwright, for the
#           OHIF browser tests); skipped when none of these files changed.
#   ohif    the prebuilt viewer @ohif/app (version pinned in deploy_scripts/ohif/package.json +
#           package-lock.json) into deploy_scripts/ohif/node_modules (git-ignored).
set -euo pipefail
# shellcheck source=deploy_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

do_apt=true
do_python=true
do_ohif=true
for arg in "$@"; do
  case "$arg" in
    --no-apt) do_apt=false ;;
    --no-python | --no-venv) do_python=false ;;
    --no-ohif) do_ohif=false ;;
    -h | --help)
      sed -n '2,15p' "$0"
      exit 0
      ;;
    *) die "unknown option $arg (see --help)" ;;
  esac
done

TORCH_INDEX="https://download.pytorch.org/whl/cpu"
OHIF_DIR="$DEPLOY_DIR/ohif"

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# --- apt ------------------------------------------------------------------------------------
apt_packages=(dcmtk orthanc orthanc-dicomweb chromium fonts-dejavu-core shellcheck
  python3-venv curl ca-certificates)
if $do_ohif && ! command -v npm >/dev/null 2>&1; then
  apt_packages+=(npm)
fi

install_apt() {
  local missing=() pkg
  for pkg in "${apt_packages[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]]; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]} == 0)); then
    log "apt: all packages present"
  else
    command -v apt-get >/dev/null 2>&1 \
      || die "apt-get not found; install by hand: ${missing[*]}"
    log "apt: installing ${missing[*]}"
    # Keep package installs from starting services (the Orthanc service would take 4242/8042).
    local created_policy=false
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
      as_root chmod 755 /usr/sbin/policy-rc.d
      created_policy=true
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      "${missing[@]}"
    if $created_policy; then
      as_root rm -f /usr/sbin/policy-rc.d
    fi
  fi
  # A system Orthanc service (started by a package install without policy-rc.d) would hold
  # the default ports; we never use it.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
    log "apt: stopping and disabling the system orthanc service (our scripts run their own)"
    as_root systemctl disable --now orthanc || log "warning: could not stop the orthanc service"
  fi
}

# --- python -----------------------------------------------------------------------------------
install_python() {
  local lock="$REPO_ROOT/requirements.lock" stamp="$VENV/.hippo-install-stamp" want
  local browser_reqs="$DEPLOY_DIR/requirements-browser.txt"
  if [[ ! -x "$VENV/bin/python" ]]; then
    local base
    base="$(command -v python3.11 || command -v python3 || true)"
    [[ -n "$base" ]] || die "python3 not found"
    "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || die "$base is older than Python 3.11"
    log "python: creating $VENV with $base"
    "$base" -m venv "$VENV"
  fi
  if [[ -f "$lock" ]]; then
    want="$(cat "$lock" "$REPO_ROOT/pyproject.toml" "$browser_reqs" | sha256sum | cut -c1-64)"
  else
    want="$(cat "$REPO_ROOT/pyproject.toml" "$browser_reqs" | sha256sum | cut -c1-64)"
  fi
  if [[ -f "$stamp" && "$(<"$stamp")" == "$want" ]] && [[ -x "$VENV/bin/hippo-scp" ]] \
    && "$VENV/bin/python" -c 'import hippo_scp' >/dev/null 2>&1; then
    log "python: $VENV up to date"
    return
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # The CPU build of torch comes from PyTorch's own index when it is reachable. Where it is
  # not (a closed network with a PyPI mirror or local wheels), pip would retry it for every
  # package; then rely on the configured index, which must provide the CPU wheel.
  local torch_index_args=()
  if curl -fsS --max-time 5 -o /dev/null "$TORCH_INDEX/" 2>/dev/null; then
    torch_index_args=(--extra-index-url "$TORCH_INDEX")
  else
    log "python: $TORCH_INDEX not reachable; torch comes from the configured pip index"
  fi
  if [[ -f "$lock" ]]; then
    log "python: pip install -r requirements.lock"
    "$VENV/bin/python" -m pip install -q "${torch_index_args[@]}" -r "$lock"
    "$VENV/bin/python" -m pip install -q --no-deps -e "$REPO_ROOT"
  else
    log "python: no requirements.lock; pip install -e .[dev]"
    "$VENV/bin/python" -m pip install -q "${torch_index_args[@]}" -e "${REPO_ROOT}[dev]"
  fi
  # Playwright (Python API only; it drives the apt chromium) for the OHIF browser tests.
  "$VENV/bin/python" -m pip install -q -r "$browser_reqs"
  "$VENV/bin/python" -c 'import hippo_scp' || die "hippo_scp does not import after pip install"
  printf '%s\n' "$want" >"$stamp"
  log "python: $VENV ready"
}

# --- OHIF -------------------------------------------------------------------------------------
install_ohif() {
  local pinned installed=""
  pinned="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["packages"]["node_modules/@ohif/app"]["version"])' "$OHIF_DIR/package-lock.json")"
  if [[ -f "$OHIF_DIR/node_modules/@ohif/app/package.json" ]]; then
    installed="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$OHIF_DIR/node_modules/@ohif/app/package.json")"
  fi
  if [[ "$installed" == "$pinned" && -f "$OHIF_DIST/index.html" ]]; then
    log "ohif: @ohif/app $pinned present"
    return
  fi
  need_cmd npm
  log "ohif: npm ci (@ohif/app $pinned, prebuilt dist/ ~200 MB)"
  # The lock file pins @ohif/app alone: we only serve its prebuilt dist/, its build-time
  # dependencies are not needed (and some are not even published at that version).
  (cd "$OHIF_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  [[ -f "$OHIF_DIST/index.html" ]] || die "npm ci finished but $OHIF_DIST/index.html is missing"
  log "ohif: @ohif/app $pinned installed"
}

if $do_apt; then install_apt; fi
if $do_python; then install_python; fi
if $do_ohif; then install_ohif; fi
log "install: done"
