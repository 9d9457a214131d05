# Sourced by the GPU check scripts: `step NAME COMMAND...` runs one check, prints its outcome and time,
# and records a failure in `failures` instead of stopping, so one run reports every failing step.
failures=()
step() {
    local name="$1"
    shift
    echo
    echo "=== $name: $*"
    local start=$SECONDS
    if "$@"; then
        echo "=== $name: ok ($((SECONDS - start)) s)"
    else
        echo "=== $name: FAILED with status $? ($((SECONDS - start)) s)"
        failures+=("$name")
    fi
}
