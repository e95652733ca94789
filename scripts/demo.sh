#!/usr/bin/env bash
# The main job on the embedded default backbone, end to end, in a few minutes on 2 CPU cores:
# start the server, train a BitFit patch for MRPC (one epoch), predict, show metrics, stop.
set -euo pipefail

PORT=${DEMO_PORT:-50151}
METRICS_PORT=${DEMO_METRICS_PORT:-9151}
STORE=$(mktemp -d -t taskpatch-demo-XXXXXX)
LOG="$STORE/server.log"
export TASKPATCH_SERVER="127.0.0.1:$PORT"

taskpatch-server --backbone default --port "$PORT" --metrics-port "$METRICS_PORT" --store-dir "$STORE/store" \
  >"$LOG" 2>&1 &
SERVER_PID=$!
cleanup() {
  kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$STORE"
}
trap cleanup EXIT

echo "== waiting for the server (embedded all-MiniLM-L6-v2) on $TASKPATCH_SERVER"
python - "$PORT" <<'PY'
import sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
channel = grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}")
stub = health_pb2_grpc.HealthStub(channel)
deadline = time.monotonic() + 120
while True:
    try:
        if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
            break
    except grpc.RpcError:
        pass
    if time.monotonic() > deadline:
        sys.exit("server did not become healthy in 120 s")
    time.sleep(0.5)
PY

echo "== client add-task mrpc (BitFit, 1 epoch over the 3,668 train pairs)"
client add-task mrpc --method bitfit --epochs 1 --data-dir "$GLUE_DIR"

echo "== client predict"
client predict mrpc "The company said profits rose 10 percent." "Profits at the company increased by 10%."
client predict mrpc "The cat sat on the mat." "Stock markets fell sharply on Monday."
client predict mrpc "He was born in Paris in 1950." "He was born in 1950 in Paris."

echo "== client tasks"
client tasks

echo "== /metrics (excerpt)"
python - "$METRICS_PORT" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
keep = ("taskpatch_rpc_requests_total", "taskpatch_predict_examples_total", "taskpatch_training_jobs_finished_total",
        "taskpatch_resident_patches ", "taskpatch_tasks_stored ", "taskpatch_backbone_info")
for line in text.splitlines():
    if line.startswith(keep):
        print(line)
PY
echo "== stopping the server"
