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

from loop.core import mlflow_params, tracking
from loop.core.config import PROJECT_ROOT
from loop.core.ledger import read_jsonl
from loop.core.tracking import TrackingConfig, TrackingError


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


def test_a_run_id_the_store_lacks_starts_a_new_run_one_it_has_is_continued(tmp_path, caplog):
    """A run folder copied to another machine resumes into that machine's MLflow store."""
    import logging

    import mlflow

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/store.db", artifacts=str(tmp_path / "art"),
                         system_metrics=False)
    first = tracking.start(cfg, "moved", "r", config=cfg, tags={})
    first.close()
    elsewhere = "0" * 32  # the id another store gave the run
    with caplog.at_level(logging.WARNING):
        t = tracking.start(cfg, "moved", "r", config=cfg, tags={}, run_id=elsewhere)
    assert t.run_id not in (elsewhere, first.run_id)
    assert f"MLflow run {elsewhere} of this run folder is not in {cfg.uri}" in caplog.text
    t.log_metrics({"x": 1.0}, step=0)
    t.close()
    client = mlflow.MlflowClient(tracking_uri=cfg.uri)
    assert client.get_run(t.run_id).info.status == "FINISHED"
    assert client.get_run(t.run_id).data.metrics == {"x": 1.0}
    again = tracking.start(cfg, "moved", "r", config=cfg, tags={}, run_id=first.run_id)
    assert again.run_id == first.run_id
    again.close()


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


def test_params_are_the_settings_that_apply_without_machine_paths(tmp_path):
    """What MLflow's compare view shows: no unset values, no cache folders or tracking URIs,
    no settings of the other domain, of an unused backend or of the other entry point."""
    from loop.core.domain import unread_settings
    from loop.tasks.arc import DOMAIN as ARC
    from loop.tasks.squad import DOMAIN as SQUAD

    squad, arc_unread = unread_settings(SQUAD), unread_settings(ARC)  # what each never reads
    project, cache = tmp_path / "project", tmp_path / "cache"
    flat = {"teacher.name": "qwen0.5b", "teacher.path": str(cache / "models" / "qwen0.5b"),
            "teacher.revision": None, "teacher.backend": "transformers",
            "teacher.vllm_memory": 0.3, "teacher.train.lr": 3e-4,
            "student.path": "/data/my_model", "student.lora.r": 32, "student.arc.lora.r": 128,
            "student.data.split_lines": True, "student.eval_backend": "transformers",
            "student.vllm_memory": 0.3, "task.format": "squad",
            "task.data": str(project / "data" / "squad" / "train_pool.json"), "loop.k": 4,
            "evaluate.samples": 2, "evaluate.conditions": ["base", "passage"],
            "evaluate.external.url": None, "evaluate.external.chat": True,
            "evaluate.forgetting": "grow", "tracking.uri": "sqlite:////x/mlflow.db",
            "serve.port": 8000, "executor.name": "local", "executor.num_workers": 2,
            "resume": None, "seed": 0}
    assert tracking.run_params(flat, "loop.run", project, cache, squad) == {
        "teacher.name": "qwen0.5b", "teacher.backend": "transformers", "teacher.train.lr": 3e-4,
        "student.path": "/data/my_model", "student.lora.r": 32, "student.data.split_lines": True,
        "student.eval_backend": "transformers", "task.format": "squad",
        "task.data": "data/squad/train_pool.json", "loop.k": 4, "executor.name": "local",
        "seed": 0}
    evaluation = tracking.run_params(flat, "loop.evaluate", project, cache, squad)
    assert {"evaluate.samples", "evaluate.conditions"} <= set(evaluation)
    assert not {"loop.k", "teacher.train.lr", "evaluate.external.chat",
                "evaluate.forgetting"} & set(evaluation)
    external = {**flat, "evaluate.conditions": ["base", "external"], "task.absorb": "sequential"}
    evaluation = tracking.run_params(external, "loop.evaluate", project, cache, squad)
    assert evaluation["evaluate.external.chat"] is True and "evaluate.external.url" not in evaluation
    assert evaluation["evaluate.forgetting"] == "grow"
    arc = tracking.run_params({**flat, "task.format": "arc", "teacher.backend": "vllm",
                               "executor.name": "ray"}, "loop.run", project, cache, arc_unread)
    assert arc["student.arc.lora.r"] == 128 and arc["teacher.vllm_memory"] == 0.3
    assert arc["executor.num_workers"] == 2
    assert not {"student.lora.r", "student.data.split_lines", "student.vllm_memory"} & set(arc)

    # the composed defaults, as a fresh `loop.run` logs them
    from loop.core.assets import cache_dir
    from loop.core.config import PROJECT_ROOT
    from tests.conftest import compose_run

    params = tracking.run_params(tracking.flatten(compose_run()), "loop.run", PROJECT_ROOT,
                                 cache_dir(), squad)
    assert params["teacher.name"] == "qwen0.5b" and params["task.data"] == "data/squad/train_pool.json"
    assert all(v is not None and str(cache_dir()) not in str(v) and str(PROJECT_ROOT) not in str(v)
               for v in params.values())
    assert not [k for k in params if k.startswith(("student.arc.", "serve.", "tracking.",
                                                   "evaluate.", "executor.num"))]


@pytest.mark.slow
def test_two_pairings_in_one_experiment_say_what_they_are(tiny_llama, tiny_qwen2, server,
                                                          tmp_path):
    """Two `loop.run`s of swapped pairings against a real MLflow server: one experiment, the
    same metric and artifact names, a description and MLflow's standard tags on each, their
    training contexts as dataset inputs, system metrics, the run's page printed, and the final
    teacher adapter as an MLflow model that loads back and writes what the folder's adapter
    writes."""
    import mlflow

    pairings = {"a": ["teacher=qwen0.5b", f"teacher.path={tiny_qwen2}", "student=smollm135m",
                      f"student.path={tiny_llama}"],
                "b": ["teacher=smollm135m", f"teacher.path={tiny_llama}", "student=qwen0.5b",
                      f"student.path={tiny_qwen2}"]}
    client = mlflow.MlflowClient(tracking_uri=server.url)
    runs, printed = {}, {}
    for name, pairing in pairings.items():
        out = tmp_path / name
        proc = subprocess.run(
            [sys.executable, "-m", "loop.run", "experiment=smoke", *pairing,
             f"tracking.uri={server.url}", "tracking.system_metrics_interval=1",
             f"hydra.run.dir={out}"], cwd=PROJECT_ROOT, capture_output=True, text=True,
            timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = client.get_run(json.loads((out / "run.json").read_text())["mlflow_run_id"])
        printed[name] = proc.stdout

    a, b = runs["a"], runs["b"]
    assert a.info.experiment_id == b.info.experiment_id
    experiment = client.get_experiment(a.info.experiment_id)
    assert experiment.name == "squad"
    assert experiment.tags[mlflow_params.EXPERIMENT_KIND] == "custom_model_development"
    assert "loop.run" in experiment.tags["mlflow.note.content"]
    for name, run in runs.items():
        url = (f"{server.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
               "?workflowType=machine_learning")
        assert printed[name].count(url) == 2  # at the start and at the end
        tags = run.data.tags
        assert tags["mlflow.source.name"] == "loop.run" and tags["mlflow.user"]
        assert tags["mlflow.source.git.commit"] == mlflow_params.git_commit(full=True)
        assert tags["mlflow.note.content"].startswith("`python -m loop.run experiment=smoke")
        teacher, student = ("qwen0.5b", "smollm135m") if name == "a" else ("smollm135m", "qwen0.5b")
        assert f"Teacher **{teacher}**" in tags["mlflow.note.content"]
        assert f"student **{student}**" in tags["mlflow.note.content"]
        assert run.data.params["teacher.name"] == teacher
        assert not [k for k in run.data.params if k.startswith(("tracking.", "student.arc."))]
        assert all("." in k or k == "seed" for k in run.data.params)  # no model_config params
        inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        assert set(inputs) == {"train_pool (train) round 0", "train_pool (train) round 1"}
        for d in inputs.values():
            assert [(t.key, t.value) for t in d.tags] == [("mlflow.data.context", "training")]
            assert json.loads(d.dataset.source)["uri"].endswith("data/squad/train_pool.json")
        assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics)
    # the contexts of a round are the same for both pairings (the run's seed decides them)
    assert ({d.dataset.digest for d in a.inputs.dataset_inputs}
            == {d.dataset.digest for d in b.inputs.dataset_inputs})

    def metrics(run):
        return {k for k in run.data.metrics if not k.startswith("system/")}
    assert metrics(a) == metrics(b) and "reward/mean" in metrics(a)
    for run in (a, b):  # (b's random tiny teacher may train no adapter: not compared there)
        assert "round_0/self_edits.json" in {
            f.path for f in client.list_artifacts(run.info.run_id, "round_0")}

    # the trained teacher, as MLflow users load it and as loop.evaluate reads it
    from loop.core.adapters import find_adapter
    from loop.core.seeds import derive_seed
    from loop.tasks.squad.prompts import self_edit_prompt
    from teacher.config import SamplingSettings
    from teacher.generate import TransformersGenerator
    from teacher.model import load_teacher
    from tests.conftest import compose_run

    out = tmp_path / "a"
    final = out / json.loads((out / "results.json").read_text())["final_adapter"]
    [output] = a.outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert logged.name == "teacher" and str(logged.status).endswith("READY")
    assert f"runs:/{a.info.run_id}/teacher" in printed["a"]
    uri = f"runs:/{a.info.run_id}/teacher"
    run = compose_run("experiment=smoke", f"tracking.uri={server.url}")
    downloaded = find_adapter(uri, run)
    assert (downloaded / "adapter_model.safetensors").read_bytes() == (
        final / "adapter_model.safetensors").read_bytes()
    mlflow.set_tracking_uri(server.url)
    writer = mlflow.pyfunc.load_model(uri)
    passage = {"title": "Tides", "context": "The Moon's gravity raises two bulges of water."}
    [text] = writer.predict([passage], params={"seed": 3, "max_new_tokens": 12})
    teacher = run.teacher
    teacher.path = tiny_qwen2
    generator = TransformersGenerator(*load_teacher(teacher), instruct=teacher.instruct,
                                      settings=SamplingSettings(**{
                                          **vars(teacher.sampling), "max_new_tokens": 12}))
    generator.use_adapter(final)
    [want] = generator.sample([self_edit_prompt(teacher.sampling.prompt, passage["title"],
                                                passage["context"])],
                              [derive_seed(3, "mlflow-predict", 0)])
    assert text == want.text and text

