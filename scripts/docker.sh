#!/usr/bin/env bash
# Make sure a Docker engine answers `docker info`; start Debian's dockerd when none does.
#
#   scripts/docker.sh            start (if needed) and wait until ready
#   scripts/docker.sh stop       stop the engine this script started (by its pidfile)
#
# The engine is started without a bridge, iptables rules or IP forwarding: containers in the
# tests run with `network_mode: none`, and nothing may leave loopback. The machine has no init
# system, so nothing else would start it. Environment:
#   DS01_DOCKERD_TIMEOUT  seconds to wait for the engine (default 60)
#   DS01_DOCKERD_LOG      dockerd's log (default .cache/dockerd.log)
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

PIDFILE=/run/ds01-test-dockerd.pid
TIMEOUT="${DS01_DOCKERD_TIMEOUT:-60}"
DOCKERD_LOG="${DS01_DOCKERD_LOG:-$DS01_CACHE/dockerd.log}"

engine_ready() {
  pick_docker_client && "$DOCKER_BIN" info >/dev/null 2>&1
}

start_dockerd() {
  local pid
  need_root "starting dockerd"
  command -v dockerd >/dev/null || die "dockerd not found: run 'make system-deps' first"
  if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    info "dockerd already running (pid $(cat "$PIDFILE")), waiting for it"
    return 0
  fi
  mkdir -p "$(dirname "$DOCKERD_LOG")"
  info "starting dockerd (log: $DOCKERD_LOG)"
  # setsid: the engine outlives this script and make; stdin closed so CI's lack of one is moot.
  setsid dockerd --storage-driver overlay2 --bridge none --iptables=false --ip-forward=false \
    --pidfile "$PIDFILE" >>"$DOCKERD_LOG" 2>&1 </dev/null &
  pid=$!
  info "dockerd pid $pid"
}

wait_ready() {
  local start deadline
  start="$(now_s)"
  deadline=$((start + TIMEOUT))
  until engine_ready; do
    if [ "$(now_s)" -ge "$deadline" ]; then
      printf "ERROR: the Docker engine did not answer 'docker info' within %s s. Last lines of %s:\n" \
        "$TIMEOUT" "$DOCKERD_LOG" >&2
      tail -n 20 "$DOCKERD_LOG" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 1
  done
  info "engine ready after $(($(now_s) - start)) s"
}

report() {
  local server client
  server="$("$DOCKER_BIN" version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')"
  client="$("$DOCKER_BIN" version --format '{{.Client.Version}} (API {{.Client.APIVersion}})')"
  info "client $DOCKER_BIN $client; server $server; storage $("$DOCKER_BIN" info --format '{{.Driver}}')"
  [ -z "${DOCKER_API_VERSION:-}" ] || info "DOCKER_API_VERSION=$DOCKER_API_VERSION"
}

stop_dockerd() {
  local pid
  if [ ! -s "$PIDFILE" ]; then
    info "no dockerd started by this script ($PIDFILE absent)"
    return 0
  fi
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    log "docker: stopping dockerd pid $pid"
    kill "$pid"
  fi
}

main() {
  case "${1:-start}" in
    start)
      log "docker: engine"
      if engine_ready; then
        info "already answering"
      else
        start_dockerd
        wait_ready
      fi
      report
      ;;
    stop) stop_dockerd ;;
    *) die "usage: $0 [start|stop]" ;;
  esac
}

main "$@"
