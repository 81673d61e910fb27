"""MLflow tracking of a training run: the driver opens and closes the run, rank 0 logs into it.

The run is found again by its name (tag ``cost.run_name``), so re-running a name resumes the same
MLflow run, with its metrics continuing at the same step numbers. Its settings must not change
between attempts: the resolved config is the run's record. The driver marks the run FINISHED,
KILLED (stopped on request, resumable) or FAILED; it is never left RUNNING by a crash that the
driver survives.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator, Mapping

from pipeline.storage import endpoint_options, naming
from train.config import HOME, ConfigError, TrainConfig

NAME_TAG = "cost.run_name"


def quiet_mlflow() -> None:
    """MLflow's info lines (its database's creation, system metrics starting and stopping) and its
    note on pickled models (pickled on purpose: they load without this checkout) off the console.
    Importing MLflow sets its loggers' levels, so it is imported first."""
    import mlflow  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)


def tracking_uri(configured: str | None = None) -> str:
    """``configured`` (``tracking.uri``), else $MLFLOW_TRACKING_URI, else a SQLite store under the home."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    os.makedirs(HOME, exist_ok=True)
    return f"sqlite:///{os.path.join(HOME, 'mlflow.db')}"


def check_answers(uri: str, timeout: float = 10.0) -> None:
    """An MLflow server at ``uri`` (http or https) answers its health check, else a ConfigError: MLflow's
    own client retries a server that does not answer for minutes, then fails with a traceback."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except OSError as e:  # urllib's URLError and HTTPError among them
        if not (isinstance(e, urllib.error.HTTPError) and e.code in (401, 403)):  # those answer
            raise ConfigError(f"config key 'tracking.uri': the MLflow server at {uri} does not answer ({e}); start "
                              "it, or set tracking.uri (or MLFLOW_TRACKING_URI) to one that does") from None
    check_credentials(uri, timeout)


def check_credentials(uri: str, timeout: float) -> None:
    """The MLflow server at ``uri`` takes the credentials MLflow's client sends (MLFLOW_TRACKING_USERNAME
    and _PASSWORD, or _TOKEN), else a ConfigError; without it, a refused run fails in every worker."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    answer = http_request(creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0, timeout=timeout,
                          raise_on_status=False, params={"max_results": 1})
    if answer.status_code in (401, 403):
        sent = f"user {creds.username!r}" if creds.username else "the token" if creds.token else "no credentials"
        raise ConfigError(f"config key 'tracking.uri': the MLflow server at {uri} refused {sent} "
                          f"(HTTP {answer.status_code}); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                          "to an account of that server (cluster/README.md, \"MLflow sign-in\")")


@functools.lru_cache(maxsize=4)
def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# The MLflow UI opens an experiment in the view this tag names; untagged, it may guess the GenAI
# (traces) view. Ours hold training runs.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"


def experiment_id(uri: str, name: str) -> str:
    """The experiment ``name``, created if new, tagged as model training either way."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is None:
        # A local SQLite store keeps artifacts beside it, not in whatever folder the job runs in.
        location = f"file://{os.path.join(HOME, 'mlartifacts')}" if uri.startswith("sqlite:") else None
        return c.create_experiment(name, artifact_location=location, tags={KIND_TAG: KIND})
    if exp.tags.get(KIND_TAG) != KIND:
        c.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND)
    return exp.experiment_id


def ui_url(server: str, exp_id: str, run_id: str | None = None, artifact: str | None = None) -> str:
    """The MLflow UI's page of an experiment's runs (or of one run, or of one of its artifacts) on
    ``server``. MLflow 3.17's UI opens experiments in the view of its GenAI / Model training switch,
    not of their kind tag, and the switch starts on GenAI: the link sets it."""
    page = f"{server.rstrip('/')}/#/experiments/{exp_id}"
    if run_id:
        page += f"/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "")
    return page + "?workflowType=machine_learning"


def find_run(uri: str, exp_id: str, name: str):  # -> mlflow.entities.Run | None
    """The run named ``name`` (tag ``cost.run_name``) in experiment ``exp_id``, if there is one."""
    found = client(uri).search_runs([exp_id], filter_string=f"tags.`{NAME_TAG}` = '{name}'", max_results=1)
    return found[0] if found else None


def open_run(uri: str, cfg: TrainConfig, name: str, params: Mapping[str, object], tags: Mapping[str, str],
             config_yaml: str) -> tuple[str, bool]:
    """(run id, resumed): the run named ``name``, created with params, tags and config.yaml if new."""
    c = client(uri)
    exp = experiment_id(uri, cfg.tracking.experiment)
    run = find_run(uri, exp, name)
    if run is not None:
        if run.info.status == "FINISHED":
            raise ConfigError(f"config key 'name': run {name!r} already finished in experiment "
                              f"{cfg.tracking.experiment!r}; choose another name to train again")
        old = run.data.params
        changed = sorted(k for k, v in params.items() if k in old and old[k] != str(v)[:6000])
        if changed:
            raise ConfigError(f"config key 'name': run {name!r} exists with other settings ({', '.join(changed)}); "
                              "resume it with the same settings, or choose another name")
        c.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, True
    run = c.create_run(exp, run_name=name, tags={NAME_TAG: name, **tags})
    from mlflow.entities import Param

    try:
        items = list(params.items())
        for i in range(0, len(items), 100):  # MLflow's limit per batch
            c.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in items[i:i + 100]])
        with naming(run.info.artifact_uri):  # a full disk there names it
            c.log_text(run.info.run_id, config_yaml, "config.yaml")
    except BaseException:
        c.delete_run(run.info.run_id)  # half made: the same command makes it whole
        raise
    return run.info.run_id, False


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int, *, background: bool = False):
    """``background``: queued to MLflow's async logging thread; returns what to ``wait()`` on."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return client(uri).log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
                                 synchronous=not background)


def log_store(uri: str, run_id: str, manifest: Mapping, url: str, context: str) -> None:
    """The frame store as the run's dataset input (the UI's Dataset column): named after its folder,
    its digest the input fingerprint prepare.py gave it, its profile the per-split counts."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    counts = {split: {k: v for k, v in info.items() if k in ("videos", "rows", "frames")}
              for split, info in manifest["splits"].items()}
    dataset = Dataset(name=f"{manifest['dataset']}:{url.rstrip('/').rsplit('/', 1)[-1]}",
                      digest=manifest["input_fingerprint"], source_type="s3" if url.startswith("s3://") else "local",
                      source=json.dumps({"uri": url}), profile=json.dumps(counts))
    given = [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])]
    try:
        client(uri).log_inputs(run_id, given)
    except Exception as e:  # MlflowException
        # Runs logging the same new store at once (results/compare.py) race to insert its row in
        # MLflow's dataset table; the loser's retry links the winner's row.
        if "UNIQUE constraint" not in str(e) and "duplicate key" not in str(e):
            raise
        client(uri).log_inputs(run_id, given)


@contextlib.contextmanager
def system_metrics(uri: str, run_id: str, every_s: float) -> Iterator[None]:
    """MLflow's own system metrics of this node (``system/...``) every ``every_s`` seconds while the
    block runs, continuing the run's earlier steps on a resume; ``every_s`` 0: none."""
    if not every_s:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=every_s, resume_logging=True, tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


def close_run(uri: str, run_id: str, status: str) -> None:
    client(uri).set_terminated(run_id, status=status)


def training_run(uri: str, ref: str):  # -> mlflow.entities.Run
    """The training run ``ref`` names: its name as the console prints it (tag ``cost.run_name``), in any
    experiment, or its MLflow run id."""
    c = client(uri)
    exps = [e.experiment_id for e in c.search_experiments()]
    named = c.search_runs(exps, filter_string=f"tags.`{NAME_TAG}` = '{ref}' and tags.mode = 'train'") \
        if exps and "'" not in ref else []
    if len(named) > 1:
        where = ", ".join(sorted(c.get_experiment(r.info.experiment_id).name for r in named))
        raise ConfigError(f"--run {ref}: {len(named)} training runs have that name (experiments {where}); "
                          "give the run id instead")
    if named:
        return named[0]
    try:
        return c.get_run(ref)
    except Exception as e:  # MlflowException: no such run
        raise ConfigError(f"--run {ref}: no training run of that name or id at {uri} "
                          f"({str(e).splitlines()[0]})") from None


def run_checkpoint(run) -> tuple[str, dict]:
    """(the best checkpoint of a finished training run, storage options to read it)."""
    path = run.data.tags.get("best_checkpoint")
    if not path:
        raise ConfigError(f"--run {run.info.run_id}: the run has no best_checkpoint tag (it did not finish "
                          "training); give --checkpoint PATH instead")
    endpoint = run.data.params.get("data.s3_endpoint")  # params hold str(value): "None" when unset
    return path, endpoint_options(None if endpoint in (None, "None") else endpoint)
