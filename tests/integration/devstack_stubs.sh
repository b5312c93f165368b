# shellcheck shell=bash
# Stand-ins for the devstack functions devstack/settings and devstack/plugin.sh
# call, for tests/integration/test_devstack.py: as small as possible, but real
# where the test looks at the effect (iniset writes the INI file; run_process
# and stop_process start and stop the command, by its PID).
#
# STUB_DIR (set by the test): calls made (calls), PIDs (<service>.pid) and
# output (<service>.log) of the processes run_process started.

: "${STUB_DIR:?STUB_DIR must name a directory of the test}"
ENABLED_SERVICES=${ENABLED_SERVICES:-}

function _stub_record {
    echo "$*" >> "$STUB_DIR/calls"
}

function echo_summary {
    echo "summary: $*"
}

function die {
    local line=$1
    shift
    echo "die: plugin.sh line $line: $*" >&2
    exit 1
}

# The test runs as root; devstack runs as STACK_USER with sudo.
function sudo {
    "$@"
}

function is_service_enabled {
    local service
    for service in "$@"; do
        if [[ ",$ENABLED_SERVICES," == *",$service,"* ]]; then
            return 0
        fi
    done
    return 1
}

function enable_service {
    local service
    for service in "$@"; do
        if ! is_service_enabled "$service"; then
            ENABLED_SERVICES=${ENABLED_SERVICES:+$ENABLED_SERVICES,}$service
        fi
    done
}

function get_python_exec_prefix {
    echo "$STUB_BIN_DIR"
}

# iniset [-sudo] FILE SECTION OPTION VALUE: set one option, the file created
# when missing (devstack's keeps the rest of the file too).
function iniset {
    if [[ "$1" == "-sudo" ]]; then
        shift
    fi
    python3 - "$@" <<'EOF'
import configparser
import sys

path, section, option, value = sys.argv[1:5]
conf = configparser.RawConfigParser()
conf.optionxform = str
conf.read(path)
if section != "DEFAULT" and not conf.has_section(section):
    conf.add_section(section)
conf.set(section, option, value)
with open(path, "w") as out:
    conf.write(out)
EOF
}

function setup_develop {
    _stub_record setup_develop "$@"
}

function pip_install {
    _stub_record pip_install "$@"
}

function get_or_create_user {
    _stub_record get_or_create_user "$@"
    echo "id-of-user-$1"
}

function get_or_add_user_project_role {
    _stub_record get_or_add_user_project_role "$@"
    echo "id-of-role-$1"
}

# run_process SERVICE COMMAND [GROUP] [USER]: devstack makes a systemd unit
# devstack@SERVICE; here the command runs in the background (words split as
# systemd's ExecStart would), outliving this shell, its PID in STUB_DIR.
function run_process {
    local service=$1 command=$2
    _stub_record run_process "$service" "${3:-}" "${4:-}"
    if ! is_service_enabled "$service"; then
        return 0
    fi
    # shellcheck disable=SC2086  # the command line is split into words on purpose
    $command < /dev/null >> "$STUB_DIR/$service.log" 2>&1 &
    echo $! > "$STUB_DIR/$service.pid"
}

# stop_process SERVICE: SIGTERM to the PID run_process kept, SIGKILL after 30 s.
function stop_process {
    local service=$1 pid i
    _stub_record stop_process "$service"
    if [[ ! -f "$STUB_DIR/$service.pid" ]]; then
        return 0
    fi
    pid=$(< "$STUB_DIR/$service.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
    fi
    rm -f "$STUB_DIR/$service.pid"
}
