"""``monai.bundle run ... --tracking mlflow`` on the tiny cohort (skipped when mlflow, the ``mlflow`` extra, is absent).

MONAI appends an ``MLFlowHandler`` to ``train#handlers`` (``DEFAULT_EXP_MGMT_SETTINGS``: trainer ``train#trainer``,
handlers ``train#handlers``); the trainer's ``train_handlers`` must attach it, and it must log the training loss.
MLflow >= 3.13 rejects ``file://`` tracking URIs (the file store), so the test uses a SQLite URI, which is also
MONAI's default (``<output_dir>/mlruns.db``).
"""

from __future__ import annotations

import math

import pytest

mlflow = pytest.importorskip("mlflow")


def test_pretrain_logs_loss_to_mlflow(run_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever MLflow writes relative to the working directory stays in tmp_path
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    executed = tmp_path / "executed_config.json"
    run_bundle("pretrain", tracking="mlflow", tracking_uri=uri, experiment_name="tgd_test",
               save_execute_config=str(executed))  # fmt: skip

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tgd_test")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "v1" and run.info.status == "FINISHED"
    assert run.data.params.get("max_epochs") == "2"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    steps = [m.step for m in history]
    assert len(steps) >= 2 and steps == sorted(set(steps)), steps  # one value per iteration
    assert all(math.isfinite(m.value) and m.value > 0 for m in history)
    assert executed.is_file()
    assert "executed_config.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
