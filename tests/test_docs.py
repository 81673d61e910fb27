"""Every command block of README.md and docs/ runs as written, in a user's checkout and shell.

README.md and docs/*.md run in one checkout, in the order a reader meets them; cluster/README.md's
Kinetics-400 recipe runs in another, against a Ray head and an MLflow server standing in for the
cluster's (its "Try it on one machine" block runs in tests/cluster, on the local multi-node cluster).
What this machine stands in for is said once, in SCALE and the substitutions below: datasets of a
few synthetic videos under the docs' paths and buckets (S3 is moto, reached through
AWS_ENDPOINT_URL as any AWS client does), the demo's config where a block names a paper config,
and one short epoch. A command only a cloud account or a GPU machine can run is named in NOT_RUN
with the reason, and is not run.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

import pytest
import s3fs

from pipeline.synthetic import SyntheticSpec, generate

pytestmark = pytest.mark.slow

# A paper config is the demo's config at the store's stride, logged to the paper config's experiment;
# no ImageNet weights for a small model.
DEMO_CONFIG = [(r"^(.*)configs/(kinetics400|moments)_r\d+_\d+f\.yaml(.*)$",
                r"\1configs/tiny_synthetic.yaml\3 data.stride=8 tracking.experiment=cost-\2"),
               (r"model\.pretrained=\S+", "model.pretrained=none"),
               (r"trainer\.num_workers=\d+", "trainer.num_workers=2"),
               (r"trainer\.num_workers=\[\d+, \d+\]", "trainer.num_workers=[1, 2]")]  # 2 batches of 16
# The cluster's blocks, checked in tests/cluster/test_local_cluster.py on a cluster of its own.
LOCAL_CLUSTER_BLOCK = "cluster/local.py up"


def make_datasets(data: Path) -> None:
    """Kinetics-400, Moments in Time and a folder tree of a few synthetic videos, in data.md's layouts."""
    kinetics = data / "kinetics400"
    generate(SyntheticSpec(kind="appearance", classes=4, videos_per_class=4, val_videos_per_class=2), kinetics)
    (data / "mit").mkdir()
    moments = (("train", "training", "trainingSet.csv"), ("val", "validation", "validationSet.csv"))
    for split, folder, csv_name in moments:
        with (data / "mit" / csv_name).open("w", newline="") as f:
            for r in csv.DictReader((kinetics / "annotations" / f"{split}.csv").open()):
                video = f"{r['youtube_id']}_{int(r['time_start']):06d}_{int(r['time_end']):06d}.mp4"
                category = r["label"].replace(" ", "_")
                for dest in (data / "mit" / folder / category / video, data / "my-videos" / split / category / video):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(kinetics / split / video, dest)
                csv.writer(f).writerow([f"{category}/{video}", category, 3, 0])
    categories = sorted(p.name for p in (data / "mit" / "training").iterdir())
    (data / "mit" / "moments_categories.txt").write_text("".join(f"{c},{i}\n" for i, c in enumerate(categories)))


@pytest.fixture(scope="module")
def services(s3_server, mlflow_server, docs, tmp_path_factory):
    """S3 with the docs' buckets, each holding kinetics400/; a Ray head whose jobs reach them, as a
    cluster's do (MLFLOW_TRACKING_URI: the MLflow server, as cluster/aws.yaml sets it)."""
    data = tmp_path_factory.mktemp("docs-data")
    make_datasets(data)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server.endpoint_url})
    for bucket in ("bucket", "my-cost-bucket"):
        fs.mkdir(bucket)
        fs.put(f"{data / 'kinetics400'}/", f"{bucket}/kinetics400/", recursive=True)
    env = {"AWS_ENDPOINT_URL": s3_server.endpoint_url, "MLFLOW_TRACKING_URI": mlflow_server,
           "COST_HOME": str(tmp_path_factory.mktemp("docs-head")),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # started from the installed venv
    with docs.ray_head(env) as head:
        yield dict(data=data, env=env, head=head, mlflow=mlflow_server)


def shell(docs, services: dict, where: Path, subs: list[tuple[str, str]]):  # -> DocShell
    """A fresh checkout whose commands reach the services, its local runs tracked in its own home."""
    env = {"AWS_ENDPOINT_URL": services["env"]["AWS_ENDPOINT_URL"], "RAY_ADDRESS": services["head"].address,
           "COST_HOME": str(where / "home")}
    (where / "data").symlink_to(services["data"])
    dashboard = [(r"http://127\.0\.0\.1:8265", services["head"].dashboard_url)]
    return docs.Shell.checkout(where, env, dashboard + subs)


def test_every_command_is_in_a_block(docs):
    for doc in docs.DOCS:
        assert docs.unfenced(doc) == [], f"{doc}: a command outside a ```sh block, which no test runs"


def test_the_readme_and_docs_commands_run_as_written(docs, services, tmp_path):
    sh = shell(docs, services, tmp_path, [(r"/data/", f"{tmp_path}/data/")] + DEMO_CONFIG)
    sh.env.pop("MLFLOW_TRACKING_URI", None)  # a new user's: the SQLite store in COST_HOME
    for doc in ("README.md", "docs/data.md", "docs/training.md", "docs/results.md"):
        for block in docs.blocks(doc):
            done = sh.run(block)
            assert done.returncode == 0, f"{doc}: {block}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    home = tmp_path / "home"
    assert (tmp_path / "demo-output" / "store" / "manifest.json").exists() and (home / "mlflow.db").exists()
    assert (tmp_path / "data" / "mit-store" / "manifest.json").exists()


def test_the_kinetics_recipe_runs_as_written(docs, services, tmp_path):
    subs = [(r"http://127\.0\.0\.1:5000", services["mlflow"])] + DEMO_CONFIG
    sh = shell(docs, services, tmp_path, subs)
    blocks = [b for b in docs.blocks("cluster/README.md") if not any(LOCAL_CLUSTER_BLOCK in c for c in b)]
    report = ""
    for block in blocks:
        done = sh.run(block)
        assert done.returncode == 0, f"cluster/README.md: {block}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        report += done.stdout if any("results/report.py" in c for c in block) else ""
    assert "| CoST(b) |" in report  # the report of the experiment the recipe's runs went to
