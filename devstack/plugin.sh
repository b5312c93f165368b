#!/bin/bash
#
# devstack plugin for Kuryr's Docker driver: `kuryr serve`, the libnetwork
# network and IPAM driver named `kuryr`, on devstack's Neutron (ML2/OVN).
#
# devstack sources devstack/settings, then this file once per phase:
#     source devstack/plugin.sh <mode> [<phase>]
#   stack install       install Kuryr from this checkout (setup_develop)
#   stack post-config   Kuryr's Keystone user (when keystone is enabled) and
#                       $KURYR_CONFIG_FILE
#   stack extra         start `kuryr serve` (after neutron-server and
#                       ovn-controller are up) and wait until it answers
#   unstack             stop it
#   clean               remove its config and state
# Everything runs in devstack's shell: functions are named kuryr_*, nothing
# here exits, and a failure goes through devstack's `die`.
#
# Settings: devstack/settings.  Usage: devstack/README.md.

# The password of Kuryr's Keystone user: KURYR_PASSWORD, else devstack's
# SERVICE_PASSWORD (which stack.sh reads after the settings are sourced).
function kuryr_password {
    echo "${KURYR_PASSWORD:-$SERVICE_PASSWORD}"
}

# keystone or noauth: KURYR_NEUTRON_AUTH, else what devstack's Neutron does.
function kuryr_auth_mode {
    if [[ -n "$KURYR_NEUTRON_AUTH" ]]; then
        echo "$KURYR_NEUTRON_AUTH"
    elif is_service_enabled keystone && [[ "${Q_AUTH_STRATEGY:-keystone}" != "noauth" ]]; then
        echo keystone
    else
        echo noauth
    fi
}

function kuryr_install {
    if [[ ! -f "$KURYR_DIR/pyproject.toml" ]]; then
        die $LINENO "KURYR_DIR=$KURYR_DIR is not a Kuryr checkout (no pyproject.toml)"
    fi
    # `pip install -e` into devstack's Python (its global venv by default),
    # with the dependencies of pyproject.toml.  Kuryr needs Python >= 3.11.
    setup_develop "$KURYR_DIR"
}

# User KURYR_USER with KURYR_ROLES (member + service: no admin) on devstack's
# service project.  Both helpers are idempotent.
function kuryr_create_account {
    local role
    get_or_create_user "$KURYR_USER" "$(kuryr_password)" "$SERVICE_DOMAIN_NAME" >/dev/null
    for role in $KURYR_ROLES; do
        get_or_add_user_project_role "$role" "$KURYR_USER" "$SERVICE_PROJECT_NAME" \
            "$SERVICE_DOMAIN_NAME" "$SERVICE_DOMAIN_NAME" >/dev/null
    done
}

# [neutron] of kuryr.conf for the auth mode.
function kuryr_configure_neutron {
    local conf=$1
    local xtrace
    case "$(kuryr_auth_mode)" in
        keystone)
            iniset "$conf" neutron auth_type password
            iniset "$conf" neutron auth_url "$KEYSTONE_SERVICE_URI"
            iniset "$conf" neutron username "$KURYR_USER"
            # Not in stack.sh's trace.
            xtrace=$(set +o | grep xtrace)
            set +o xtrace
            iniset "$conf" neutron password "$(kuryr_password)"
            $xtrace
            iniset "$conf" neutron user_domain_name "$SERVICE_DOMAIN_NAME"
            iniset "$conf" neutron project_name "$SERVICE_PROJECT_NAME"
            iniset "$conf" neutron project_domain_name "$SERVICE_DOMAIN_NAME"
            # Neutron's URL comes from Keystone's catalog (service type network).
            iniset "$conf" neutron region_name "$REGION_NAME"
            ;;
        noauth)
            iniset "$conf" neutron auth_type none
            iniset "$conf" neutron endpoint "$KURYR_NEUTRON_ENDPOINT"
            ;;
        *)
            die $LINENO "KURYR_NEUTRON_AUTH=$KURYR_NEUTRON_AUTH: expected keystone or noauth"
            ;;
    esac
}

# $KURYR_CONFIG_FILE, written afresh at every stack.sh: no option of an earlier
# run (another auth mode, say) stays behind.  Only options kuryr/config.py has.
function kuryr_configure {
    local conf=$KURYR_CONFIG_FILE
    sudo install -d -o "$STACK_USER" -m 0700 "$KURYR_CONFIG_DIR"
    # Kuryr runs as root: its state is root's.
    sudo install -d -m 0700 "$KURYR_STATE_DIR"
    rm -f "$conf"
    # It holds the Keystone password.
    install -m 0600 /dev/null "$conf"

    iniset "$conf" DEFAULT debug "$KURYR_DEBUG"
    iniset "$conf" DEFAULT host "$KURYR_HOST"
    iniset "$conf" DEFAULT kuryr_uri "unix://$KURYR_SOCKET"
    iniset "$conf" DEFAULT docker_uri "$KURYR_DOCKER_URI"
    iniset "$conf" DEFAULT state_dir "$KURYR_STATE_DIR"
    kuryr_configure_neutron "$conf"
    iniset "$conf" binding ovs_bridge "$KURYR_OVS_BRIDGE"
    if [[ -n "$KURYR_PUBLISH_NETWORK" ]]; then
        iniset "$conf" publish floating_ip_network "$KURYR_PUBLISH_NETWORK"
    fi
}

# Whether something answers Docker's first plugin call on the socket.  The
# plugin API answers only to a localhost Host, and JSON or no Content-Type.
function kuryr_plugin_answers {
    local answer
    answer=$(sudo curl --silent --max-time 5 --unix-socket "$KURYR_SOCKET" -X POST \
        http://localhost/Plugin.Activate 2>/dev/null) || return 1
    [[ "$answer" == *NetworkDriver* ]]
}

function kuryr_start {
    if kuryr_plugin_answers; then
        # A new Kuryr would refuse the socket and exit, and the old one (with
        # its old config) would seem to be this one.
        die $LINENO "a plugin already answers on $KURYR_SOCKET: stop it first (unstack.sh)"
    fi
    run_process kuryr "$KURYR_BIN serve --config-file $KURYR_CONFIG_FILE" root root

    local deadline=$((SECONDS + KURYR_START_TIMEOUT))
    until kuryr_plugin_answers; do
        if (( SECONDS >= deadline )); then
            die $LINENO "Kuryr did not answer on $KURYR_SOCKET within" \
                "$KURYR_START_TIMEOUT s (its log: journalctl -u devstack@kuryr)"
        fi
        sleep 1
    done
    # Neutron (and Keystone) with Kuryr's credentials, the OVS bridge, the
    # socket where dockerd looks for it, dockerd itself: each OK or why not.
    if ! sudo "$KURYR_BIN" status --config-file "$KURYR_CONFIG_FILE"; then
        die $LINENO "kuryr status found a problem (above)"
    fi
}

function kuryr_clean {
    sudo rm -f "$KURYR_CONFIG_FILE"
    sudo rmdir --ignore-fail-on-non-empty "$KURYR_CONFIG_DIR" 2>/dev/null || true
    sudo rm -rf "${KURYR_STATE_DIR:?}"
}

if is_service_enabled kuryr; then
    if [[ "${1:-}" == "stack" && "${2:-}" == "install" ]]; then
        echo_summary "Installing Kuryr (Docker driver) from $KURYR_DIR"
        kuryr_install
    elif [[ "${1:-}" == "stack" && "${2:-}" == "post-config" ]]; then
        echo_summary "Configuring Kuryr: $KURYR_CONFIG_FILE ($(kuryr_auth_mode) Neutron)"
        if is_service_enabled keystone && [[ "$(kuryr_auth_mode)" == "keystone" ]]; then
            kuryr_create_account
        fi
        kuryr_configure
    elif [[ "${1:-}" == "stack" && "${2:-}" == "extra" ]]; then
        # Here, not at post-config: Kuryr reads Neutron's extensions and binds
        # ports to the OVN chassis when it starts, so neutron-server and
        # ovn-controller must be running (devstack starts them in between).
        echo_summary "Starting Kuryr on $KURYR_SOCKET"
        kuryr_start
    fi

    if [[ "${1:-}" == "unstack" ]]; then
        stop_process kuryr
    fi

    if [[ "${1:-}" == "clean" ]]; then
        kuryr_clean
    fi
fi
