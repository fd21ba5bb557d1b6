#!/usr/bin/env bash
# Screenshots of the MLflow UI for two runs of one experiment, taken by headless Chromium
# (Debian: apt-get install chromium): the Runs view, run A's page, the compare view of A and B,
# and run A's artifacts. Usage, from the project folder:
#   scripts/mlflow_screenshots.sh <backend store URI> <run id A> <run id B> [out folder] [artifacts]
# e.g. scripts/mlflow_screenshots.sh sqlite:///mlflow.db 0e39c5dd... 190b55f6... docs
# (artifacts: the folder a `mlflow server --artifacts-destination` wrote; default mlartifacts)
set -euo pipefail
store=$1 a=$2 b=$3 out=${4:-docs} artifacts=${5:-mlartifacts}
port=5077 url=http://127.0.0.1:5077
.venv/bin/mlflow ui --backend-store-uri "$store" --artifacts-destination "$artifacts" \
    --host 127.0.0.1 --port $port --workers 1 > /tmp/mlflow_screenshots_ui.log 2>&1 &
ui=$!
trap 'kill $ui 2>/dev/null' EXIT
for _ in $(seq 120); do curl -sf $url/health > /dev/null && break; sleep 1; done
exp=$(.venv/bin/python -c "import mlflow,sys; print(mlflow.MlflowClient('$url').get_run('$a').info.experiment_id)")
shot() {  # name, page (after the #)
    chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1000 \
        --virtual-time-budget=20000 --screenshot="$out/mlflow_$1.png" "$url/#$2" > /dev/null 2>&1
    echo "$out/mlflow_$1.png: $url/#$2"
}
ml=workflowType=machine_learning
shot runs "/experiments/$exp/runs?$ml"
shot run "/experiments/$exp/runs/$a?$ml"
shot compare "/compare-runs?runs=%5B%22$a%22,%22$b%22%5D&experiments=%5B%22$exp%22%5D&$ml"
shot artifacts "/experiments/$exp/runs/$a/artifacts?$ml"
