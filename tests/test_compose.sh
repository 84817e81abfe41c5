#!/usr/bin/env bash
# The compose/ folder, checked without a container engine (`make check-compose`,
# part of `make test`, which installs the tools first):
# - docker-compose (Debian's, 1.29) parses compose/docker-compose.yml with
#   compose/.env and fills in every variable;
# - the file keeps what the README promises: only the load balancer publishes
#   a port (api and worker scale), Redis runs compose/redis.conf on a volume
#   with a healthcheck, the API has a /health healthcheck, the worker reserves
#   an NVIDIA GPU and keeps models on a volume;
# - every variable the compose file reads is set and documented in .env, and
#   .env sets nothing the compose file does not read;
# - compose/redis.conf keeps AOF and noeviction;
# - yamllint passes (its default rules);
# - dockerfilelint passes on both Dockerfiles, and fails on a bad one (so the
#   linter really runs).
# Offline: the tools must already be installed.
set -u
cd "$(dirname "$0")/.."

LINT=build/npm/node_modules/.bin/dockerfilelint
passed=0
failed=0
tmp=$(mktemp -d /tmp/millrace-test-compose-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        passed=$((passed + 1))
        echo "ok: $name"
    else
        failed=$((failed + 1))
        echo "FAILED: $name"
        printf '%s\n' "$out" | sed 's/^/    /'
    fi
}

for tool in docker-compose yamllint python3 "$LINT"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "FAILED: $tool is not installed (make check-compose installs it)"
        exit 1
    fi
done

compose_config() {
    docker-compose -f compose/docker-compose.yml config -q
}

# The resolved file (variables filled in from .env) must say what the README says.
compose_shape() {
    docker-compose -f compose/docker-compose.yml config >"$tmp/resolved.yml" || return 1
    python3 - "$tmp/resolved.yml" <<'PY'
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
s = c["services"]
bad = []
def need(cond, what):
    if not cond:
        bad.append(what)
need(set(s) == {"redis", "api", "lb", "worker"}, "services are redis, api, lb, worker")
published = sorted(n for n, v in s.items() if v.get("ports"))
need(published == ["lb"], "only lb publishes a port (got %s)" % published)
r = s["redis"]
need(r["image"].startswith("redis:7"), "redis image redis:7")
need("/usr/local/etc/redis/redis.conf" in r["command"], "redis runs redis.conf")
need(any(v.endswith(":/data:rw") or v.endswith(":/data") for v in r["volumes"]), "redis /data volume")
need(r["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"], "redis healthcheck redis-cli ping")
a = s["api"]
need(a["build"]["dockerfile"] == "compose/Dockerfile.api", "api from Dockerfile.api")
need("/health" in " ".join(a["healthcheck"]["test"]), "api healthcheck on /health")
need(a["environment"]["MILLRACE_REDIS"] == "redis://redis:6379", "api talks to redis")
w = s["worker"]
need(w["build"]["dockerfile"] == "compose/Dockerfile.worker", "worker from Dockerfile.worker")
dev = w["deploy"]["resources"]["reservations"]["devices"][0]
need(dev["driver"] == "nvidia" and "gpu" in dev["capabilities"], "worker reserves an NVIDIA GPU")
need(any(v.startswith("models:") for v in w["volumes"]), "worker model cache volume")
need(w["environment"]["MILLRACE_MODEL"].endswith(".gguf"), "worker MODEL is a .gguf")
need(w["environment"]["MILLRACE_DEVICE"] == "cuda", "worker on cuda")
need(set(c["volumes"]) == {"redis-data", "models"}, "named volumes redis-data, models")
for b in bad:
    print("missing:", b)
sys.exit(1 if bad else 0)
PY
}

# Each ${VAR} of the compose file is set in .env with a comment above it
# (a group of lines may share one), and .env sets no variable the compose
# file does not read.
env_documented() {
    local used set_ ok=0 var
    used=$(grep -o '\${[A-Z_][A-Z0-9_]*' compose/docker-compose.yml | cut -c3- | sort -u)
    set_=$(grep -E '^[A-Z_][A-Z0-9_]*=' compose/.env | cut -d= -f1 | sort -u)
    for var in $used; do
        if ! grep -qx "$var" <<<"$set_"; then
            echo "$var is read by docker-compose.yml but not set in .env"
            ok=1
        fi
    done
    # a variable line needs a comment above it (lines of one group share one)
    if awk '/^#/ { c = 1; next } /^[A-Z_][A-Z0-9_]*=/ { if (!c) { print $0 ": no comment above it"; bad = 1 } next } { c = 0 } END { exit bad }' compose/.env; then :; else
        ok=1
    fi
    for var in $set_; do
        grep -qx "$var" <<<"$used" || {
            echo "$var is set in .env but docker-compose.yml does not read it"
            ok=1
        }
    done
    return $ok
}

redis_conf() {
    grep -qx 'appendonly yes' compose/redis.conf && grep -qx 'maxmemory-policy noeviction' compose/redis.conf
}

lint_catches_a_bad_file() {
    printf 'FROM debian\nRUN apt-get update\nRUN apt-get install curl\n' >"$tmp/Dockerfile.bad"
    ! "$LINT" "$tmp/Dockerfile.bad" >/dev/null 2>&1
}

check "docker-compose config parses compose/docker-compose.yml with compose/.env" compose_config
check "the compose file has the services, ports, volumes and GPU the README describes" compose_shape
check "every variable the compose file reads is set and documented in compose/.env" env_documented
check "compose/redis.conf: appendonly yes, maxmemory-policy noeviction" redis_conf
check "yamllint compose/docker-compose.yml" yamllint -s compose/docker-compose.yml
check "dockerfilelint compose/Dockerfile.api" "$LINT" compose/Dockerfile.api
check "dockerfilelint compose/Dockerfile.worker" "$LINT" compose/Dockerfile.worker
check "dockerfilelint rejects a bad Dockerfile (the linter runs)" lint_catches_a_bad_file

echo
echo "compose checks passed: $passed, failed: $failed"
[ "$failed" -eq 0 ]
