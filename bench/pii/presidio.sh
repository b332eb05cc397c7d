#!/usr/bin/env bash
# Presidio's analyzer on the same generated corpus as `pii-bench`, so the two
# throughputs can be compared on one machine.
#
#   bench/pii/presidio.sh            # Presidio as usually deployed: spaCy NER model
#   bench/pii/presidio.sh --no-ner   # lower bound: blank spaCy pipeline, patterns only
#
# Environment:
#   PRESIDIO_VENV       where to create the venv [target/presidio-venv]
#   PRESIDIO_SPACY_MODEL  a pip requirement for the spaCy model when the package
#                       index has none (a wheel file path, or a name on a mirror you
#                       trust) [en_core_web_sm]
#   PRESIDIO_CORPUS_KIB corpus size [512]; PRESIDIO_SECONDS time budget [20]
#
# spaCy's models (en_core_web_sm, ...) are published as release downloads, not
# on the package index; when the model cannot be installed, this script says so
# and exits 0 (unless --no-ner was given).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

NO_NER=0
for arg in "$@"; do
    case "$arg" in
        --no-ner) NO_NER=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "presidio.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

VENV="${PRESIDIO_VENV:-$ROOT/target/presidio-venv}"
MODEL_REQ="${PRESIDIO_SPACY_MODEL:-en_core_web_sm}"
KIB="${PRESIDIO_CORPUS_KIB:-512}"
SECONDS_BUDGET="${PRESIDIO_SECONDS:-20}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
CORPUS="$TARGET/pii-corpus-${KIB}k.txt"

say() { printf 'presidio.sh: %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating a venv in $VENV"
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import presidio_analyzer' 2>/dev/null; then
    say "installing presidio-analyzer"
    "$VENV/bin/pip" install -q --disable-pip-version-check presidio-analyzer
fi

MODEL_NAME=en_core_web_sm
if [ "$NO_NER" = 0 ]; then
    MODEL_NAME=$(basename "$MODEL_REQ" | sed 's/-[0-9].*//; s/\.whl$//; s/-/_/g')
    if ! "$VENV/bin/python" -c "import $MODEL_NAME" 2>/dev/null; then
        if ! "$VENV/bin/pip" install -q --disable-pip-version-check "$MODEL_REQ" 2>/dev/null; then
            say "the spaCy model '$MODEL_REQ' cannot be installed from the package index"
            say "this machine reaches (spaCy publishes its models as release downloads,"
            say "not as index packages), so Presidio's default analyzer (spaCy NER plus"
            say "pattern recognizers) cannot run here. Nothing was measured."
            say "Options: PRESIDIO_SPACY_MODEL=/path/to/en_core_web_sm-X.Y.Z-py3-none-any.whl"
            say "(a wheel you obtained and trust), or --no-ner for a lower bound on"
            say "Presidio's cost (its pattern recognizers on a blank spaCy pipeline)."
            exit 0
        fi
    fi
fi

say "building pii-bench and writing a ${KIB} KiB corpus"
cargo build -q --release -p ironcage-bench --bin pii-bench
"$TARGET/release/pii-bench" --size-kib "$KIB" --write-corpus "$CORPUS"

echo
echo "== Iron Cage engine (same corpus, one core)"
"$TARGET/release/pii-bench" --size-kib "$KIB" --seconds 2
echo
echo "== Presidio"
ARGS=("$CORPUS" --seconds "$SECONDS_BUDGET" --model "$MODEL_NAME")
[ "$NO_NER" = 1 ] && ARGS+=(--no-ner)
"$VENV/bin/python" "$ROOT/bench/pii/presidio_run.py" "${ARGS[@]}"
