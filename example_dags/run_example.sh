#!/usr/bin/env bash
# Set up .venv and run an example DAG end to end with `airflow dags test`.
#
# Without AIRFLOW_CONN_DATAVERSE_DEFAULT, the local Dataverse emulator is started on 127.0.0.1 and the
# DAG runs against it; with it set, the DAG runs against that environment.
#
# Usage: bash example_dags/run_example.sh [DAG_ID] [extra `airflow dags test` arguments, e.g. -c '{...}']
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dag_id=${1:-example_desktop_flow_pipeline}
shift || true

bash "$root/.ci/setup"
export PATH="$root/.venv/bin:$PATH"

work=$(mktemp -d)
emulator_pid=""
cleanup() {
    if [ -n "$emulator_pid" ]; then kill "$emulator_pid" 2>/dev/null || true; wait "$emulator_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

export AIRFLOW_HOME=${AIRFLOW_HOME:-$work/airflow}
export AIRFLOW__CORE__DAGS_FOLDER="$root/example_dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False

if [ -z "${AIRFLOW_CONN_DATAVERSE_DEFAULT:-}" ]; then
    echo "AIRFLOW_CONN_DATAVERSE_DEFAULT is not set: starting the local Dataverse emulator."
    python -m airflow_provider_pad.emulator --port 0 --ready-file "$work/connection.json" >"$work/emulator.log" 2>&1 &
    emulator_pid=$!
    for _ in $(seq 1 100); do
        [ -s "$work/connection.json" ] && break
        kill -0 "$emulator_pid" 2>/dev/null || { cat "$work/emulator.log"; exit 1; }
        sleep 0.1
    done
    [ -s "$work/connection.json" ] || { echo "The emulator did not start within 10 s:"; cat "$work/emulator.log"; exit 1; }
    AIRFLOW_CONN_DATAVERSE_DEFAULT=$(cat "$work/connection.json")
    export AIRFLOW_CONN_DATAVERSE_DEFAULT
fi

airflow db migrate >"$work/db-migrate.log" 2>&1 || { cat "$work/db-migrate.log"; exit 1; }
airflow dags test "$dag_id" "$@" 2>&1 | tee "$work/dags-test.log"

echo
echo "Summary:"
grep -E "Desktop flow outputs|Started desktop flow run|succeeded with outputs|ended with status" "$work/dags-test.log" | sed -E -e 's/^.*(Desktop flow|Started desktop)/\1/' -e 's/ +\[airflow[^]]*\].*$//' || true
grep -q "Desktop flow outputs" "$work/dags-test.log"
