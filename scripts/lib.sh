# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run).

# Installs Debian packages as root or with sudo.
apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

# Creates (or refreshes, when tests/requirements.txt changed) the venv at
# $1 with the pinned Python packages.
ensure_venv() {
    local venv=$1
    if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/requirements.txt "$venv/.requirements.txt"; then
        echo "creating the Python venv $venv from tests/requirements.txt"
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
        cp tests/requirements.txt "$venv/.requirements.txt"
    fi
}
