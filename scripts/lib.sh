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

# Builds the iron_cage Python module (cage/) with cargo's profile $2 (debug or
# release; default debug) and installs the package into $1/iron_cage/: the
# Python files from cage/python/iron_cage/ and the extension module as
# _native.abi3.so. ironcaged looks for it in <its own directory>/python.
build_cage_module() {
    local dest=$1 profile=${2:-debug} flag=""
    [ "$profile" = release ] && flag="--release"
    cargo build --locked -q -p iron-cage-py $flag
    install_cage_module "$dest" "${CARGO_TARGET_DIR:-target}/$profile/libiron_cage.so"
}

# Installs the package into $1/iron_cage/ from the built library $2.
install_cage_module() {
    local dest=$1 lib=$2
    mkdir -p "$dest/iron_cage"
    cp cage/python/iron_cage/*.py cage/python/iron_cage/*.pyi cage/python/iron_cage/py.typed "$dest/iron_cage/"
    # Copy then rename: a running agent may have the old file mapped.
    cp "$lib" "$dest/iron_cage/.native.tmp" && mv -f "$dest/iron_cage/.native.tmp" "$dest/iron_cage/_native.abi3.so"
}
