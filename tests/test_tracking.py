"""Tracking outages against a real MLflow server on loopback, stopped and restarted by the
tests: unreachable at launch is a clear error; gone mid-run, the run goes on, keeps what it
could not send in its folder, and sends it when the server is back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from loop import tracking
from loop.config import PROJECT_ROOT
from loop.ledger import read_jsonl
from loop.tracking import TrackingConfig, TrackingError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1:<port> over a SQLite store that outlives restarts."""

    def __init__(self, folder: Path, port: int):
        self.folder, self.port, self.proc = folder, port, None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> MlflowServer:
        mlflow = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.folder}/store.db",
             "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return self
            except OSError:
                assert self.proc.poll() is None, "mlflow server exited"
                assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
                time.sleep(0.3)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # gone, as a crashed or rebooted server is
        self.proc.wait()


@pytest.fixture
def server(tmp_path):
    s = MlflowServer(tmp_path / "server", free_port()).start()
    yield s
    if s.proc.poll() is None:
        s.stop()


def test_unreachable_at_launch_names_the_uri_and_the_way_out(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(TrackingError, match=rf"tracking.uri={uri} cannot be reached .*tracking=none"):
        tracking.start(TrackingConfig(uri=uri), "x", "x", config={}, tags={})
    out = subprocess.run([sys.executable, "-m", "loop.run", f"tracking.uri={uri}",
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"error: the MLflow server at tracking.uri={uri} cannot be reached" in out.stderr
    assert not (tmp_path / "run" / "run.json").exists()  # refused before the run folder


def test_server_gone_mid_run_records_are_kept_then_sent(server, tmp_path):
    pending = tmp_path / "tracking_pending.jsonl"
    cfg = TrackingConfig(uri=server.url)
    t = tracking.start(cfg, "outage", "r", config=cfg, tags={},
                       pending=pending)
    t.log_metrics({"x": 1.0}, step=0)
    server.stop()
    (tmp_path / "note.txt").write_text("an artifact")
    t0 = time.monotonic()
    t.log_metrics({"x": 2.0}, step=1)
    t.log_table([{"a": 1, "b": "y"}], "table.json")
    t.log_artifact(tmp_path / "note.txt")
    assert time.monotonic() - t0 < 60  # failing fast, not MLflow's minutes of retries
    assert [r["op"] for r in read_jsonl(pending)] == ["metrics", "table", "artifact"]

    server.start()
    assert t.flush()
    assert not pending.exists()
    t.close()
    client = __import__("mlflow").MlflowClient(tracking_uri=server.url)
    assert [(m.step, m.value) for m in client.get_metric_history(t.run_id, "x")] == [
        (0, 1.0), (1, 2.0)]
    assert {a.path for a in client.list_artifacts(t.run_id)} == {"note.txt", "table.json"}
    assert client.get_run(t.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_a_whole_run_outlives_its_server_and_syncs_afterwards(tiny_llama, tiny_qwen2, server,
                                                              tmp_path):
    """`loop.run` whose server dies after the run started: it finishes, keeps every record in
    its folder and says how to send them; `python -m loop.tracking sync` sends them."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "loop.run", "experiment=smoke", f"teacher.path={tiny_qwen2}",
           f"student.path={tiny_llama}", f"tracking.uri={server.url}", f"hydra.run.dir={out}"]
    logs = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(logs[0], "w") as o, open(logs[1], "w") as e:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=o, stderr=e)
    deadline = time.monotonic() + 300
    while not (out / "run.json").exists() or not json.loads(
            (out / "run.json").read_text()).get("mlflow_run_id"):
        assert proc.poll() is None and time.monotonic() < deadline, logs[1].read_text()[-3000:]
        time.sleep(0.2)
    server.stop()
    proc.wait(timeout=600)
    stdout, stderr = (p.read_text() for p in logs)
    assert proc.returncode == 0, stderr[-3000:]
    assert "an MLflow call failed" in stdout + stderr  # the log goes where Hydra sends it
    assert f"send them with: python -m loop.tracking sync {out}" in stdout
    kept = read_jsonl(out / "tracking_pending.jsonl")
    assert [r["op"] for r in kept].count("metrics") == 2 and kept[-1] == {
        "op": "end", "status": "FINISHED"}

    refused = subprocess.run([sys.executable, "-m", "loop.tracking", "sync", str(out)],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "cannot be reached" in refused.stderr
    server.start()
    sent = subprocess.run([sys.executable, "-m", "loop.tracking", "sync", str(out)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert sent.returncode == 0, sent.stderr[-3000:]
    assert f"{out}: {len(kept)} tracking records sent" in sent.stdout
    assert not (out / "tracking_pending.jsonl").exists()
    client = __import__("mlflow").MlflowClient(tracking_uri=server.url)
    run_id = json.loads((out / "run.json").read_text())["mlflow_run_id"]
    assert {m.step for m in client.get_metric_history(run_id, "reward/mean")} == {0, 1}
    assert "results.json" in {a.path for a in client.list_artifacts(run_id)}
    assert client.get_run(run_id).info.status == "FINISHED"
