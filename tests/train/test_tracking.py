"""train/tracking.py against the session's MLflow server."""

from mlflow.tracking import MlflowClient

from train import tracking


def test_an_experiment_made_before_is_tagged_as_model_training(mlflow_server):
    client = MlflowClient(mlflow_server)
    old = client.create_experiment("made-before")  # untagged: the UI may open it as a GenAI experiment
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    assert tracking.experiment_id(mlflow_server, "made-before") == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    new = tracking.experiment_id(mlflow_server, "made-now")
    assert client.get_experiment(new).tags["mlflow.experimentKind"] == "custom_model_development"
