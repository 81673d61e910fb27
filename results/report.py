"""The paper's comparison tables, built from the finished training runs of an MLflow experiment.

    python results/report.py --experiment cost [--out DIR] [--tracking-uri URI]

One row per (dataset, model, arch, frames, CoST kernels shared or not, test protocol), as in the
paper's Tables 2-5: parameters (M), GFLOPs per clip, training clips/s, single-clip validation and
multi-clip test top-1/top-5 in %, as the mean and standard deviation over the group's runs (e.g.
seeds); beside them the paper's published numbers where the row is one of the paper's settings
(``results/paper_results.csv``, Table 3's unshared CoST included) tested with the paper's protocol
(10 clips, the whole frame at short side 256): other protocols give other numbers. Then, per
CoST run, the view-coefficient summary (paper Figs. 7-8) with its plots.

Written to DIR as ``report.md`` and ``report.csv`` (plots under ``analysis/<run>/``), printed, and
logged to a new run named "report" in the same experiment, so the MLflow UI shows it.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from train import tracking
from train.config import HOME
from train.plots import summary, write_csv

ARCH_NAMES = {"c2d": "C2D", "c3d": "C3D", "cost_a": "CoST(a)", "cost_b": "CoST(b)"}
PAPER = Path(__file__).with_name("paper_results.csv")
ACCURACY = ("val_top1", "val_top5", "test_top1", "test_top5")
SAME_IN_A_GROUP = ("name", "trainer.seed")  # params that may differ between the runs of one row


KEY = ("dataset", "model", "arch", "frames", "kernels", "protocol")
PAPER_PROTOCOL = "10 x full @ 256"  # section 4.2: 10 clips, fully convolutional at short side 256


@dataclass
class RunResult:
    run_id: str
    name: str
    key: tuple[str, str, str, int, str, str]  # KEY
    metrics: dict[str, float]
    hardware: str
    params: dict[str, str] = field(repr=False)


def dataset_label(dataset: str, classes: str | None) -> str:
    """The store's dataset, with Kinetics' variant from its class count (kinetics400, ...)."""
    return f"kinetics{classes}" if dataset == "kinetics" and classes else dataset


def model_label(params: dict[str, str]) -> str:
    """R50 / R101, or "blocks 1-1-1-1 w16" for a small model."""
    blocks = params.get("model.blocks", "None")
    if blocks == "None":
        return f"R{params.get('model.depth', '?')}"
    return f"blocks {'-'.join(c for c in blocks if c.isdigit())} w{params.get('model.width', '?')}"


def kernels_label(arch: str, params: dict[str, str]) -> str:
    """CoST's view kernels: "shared" (the paper's CoST) or "unshared" (Table 3); "-" for C2D and C3D."""
    if not arch.startswith("cost"):
        return "-"
    return "unshared" if params.get("model.cost_shared") == "False" else "shared"


def protocol_label(params: dict[str, str]) -> str:
    """The multi-clip test protocol, e.g. "10 x full @ 256": clips, views, short side."""
    return (f"{params.get('data.test_clips', '?')} x {params.get('data.test_protocol', '?')} @ "
            f"{params.get('data.eval_short_side', '?')}")


def collect(uri: str, experiment: str) -> list[RunResult]:
    """The experiment's finished training runs (not evaluation-only or report runs)."""
    client = tracking.client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"--experiment: no experiment {experiment!r} at {uri}")
    runs = client.search_runs([exp.experiment_id], "tags.mode = 'train' and attributes.status = 'FINISHED'",
                              max_results=10000)
    results = []
    for run in runs:
        tags, params, metrics = run.data.tags, run.data.params, dict(run.data.metrics)
        speed = [m.value for m in client.get_metric_history(run.info.run_id, "clips_per_s")]
        if speed:
            metrics["clips_per_s"] = float(np.median(speed))  # robust to the first window's start-up
        arch = tags.get("arch", params.get("model.arch", "?"))
        key = (dataset_label(tags.get("dataset", "?"), tags.get("classes")), model_label(params), arch,
               int(params.get("data.frames", 0)), kernels_label(arch, params), protocol_label(params))
        results.append(RunResult(run.info.run_id, run.info.run_name, key, metrics, tags.get("hardware", ""), params))
    return results


def load_paper(path: str | os.PathLike = PAPER) -> dict[tuple, dict]:
    """The paper's results by row key, all under the paper's own test protocol."""
    with open(path, newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return {(r["dataset"], r["model"], r["arch"], int(r["frames"]), r["kernels"], PAPER_PROTOCOL): r
                for r in rows}


def by_key(runs: list[RunResult]) -> dict[tuple, list[RunResult]]:
    """The runs grouped by their row (KEY)."""
    groups: dict[tuple, list[RunResult]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)
    return groups


def table(runs: list[RunResult], paper: dict) -> list[dict]:
    """One row per group of runs, in the paper's order (dataset, model, frames, then arch)."""
    groups = by_key(runs)
    order = list(ARCH_NAMES)

    def sort_key(key: tuple) -> tuple:
        dataset, model, arch, frames, kernels, protocol = key
        return (dataset, len(model), model, frames, order.index(arch) if arch in order else len(order), arch,
                kernels, protocol != PAPER_PROTOCOL, protocol)

    rows = []
    for key in sorted(groups, key=sort_key):
        group = groups[key]
        row: dict = dict(zip(KEY, key, strict=True), runs=len(group))
        for name, scale in (("params_m", 1), ("gflops", 1), ("clips_per_s", 1)) + tuple((m, 100) for m in ACCURACY):
            values = [r.metrics[name] * scale for r in group if name in r.metrics]
            row[name] = round(float(np.mean(values)), 2) if values else None
            if name in ACCURACY:
                row[f"{name}_std"] = round(float(np.std(values, ddof=1)), 2) if len(values) > 1 else None
        published = paper.get(key, {})
        # Runs from before trainer.test_checkpoint existed tested the last epoch's weights.
        tested = sorted({r.params.get("trainer.test_checkpoint", "last") for r in group})
        row.update(tested="/".join(tested), paper_top1=published.get("top1"), paper_top5=published.get("top5"),
                   paper_source=published.get("source"), hardware=", ".join(sorted({r.hardware for r in group} - {""})),
                   run_ids=" ".join(r.run_id for r in group))
        rows.append(row)
    return rows


def mixed_settings(runs: list[RunResult]) -> list[str]:
    """A note per row whose runs differ in more than their name and seed."""
    groups = by_key(runs)
    notes = []
    for key, group in groups.items():
        keys = set().union(*(r.params for r in group)) - set(SAME_IN_A_GROUP)
        differ = sorted(k for k in keys if len({r.params.get(k) for r in group}) > 1)
        if differ:
            notes.append(f"{' / '.join(map(str, key))}: its runs differ in {', '.join(differ)}")
    return notes


def _cell(row: dict, name: str) -> str:
    value, std = row.get(name), row.get(f"{name}_std")
    if value is None:
        return "-"
    text = f"{value:.1f}" if name in ACCURACY or name == "clips_per_s" else f"{value:.3g}"  # params, GFLOPs
    return f"{text} ± {std:.1f}" if std is not None else text


HEAD = ["Dataset", "Model", "Arch", "Frames", "Test protocol", "Runs", "Params (M)", "GFLOPs", "Train clips/s",
        "Val top-1", "Val top-5", "Test top-1", "Test top-5", "Paper top-1", "Paper top-5"]


def cells(r: dict) -> list[str]:
    """One table row's cells, in HEAD's order."""
    arch = ARCH_NAMES.get(r["arch"], r["arch"]) + (" unshared" if r["kernels"] == "unshared" else "")
    return [r["dataset"], r["model"], arch, str(r["frames"]), f"{r['protocol']}, {r['tested']}", str(r["runs"]),
            _cell(r, "params_m"), _cell(r, "gflops"), _cell(r, "clips_per_s"),
            *(_cell(r, m) for m in ACCURACY), r["paper_top1"] or "-", r["paper_top5"] or "-"]


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    return "\n".join(lines + ["| " + " | ".join(cells(r)) + " |" for r in rows])


def html(title: str, rows: list[dict], notes: str) -> str:
    """The table as a page MLflow's artifact viewer renders (it shows .md files as plain text)."""
    def tr(tag: str, items: list[str]) -> str:
        return "<tr>" + "".join(f"<{tag}>{escape(x)}</{tag}>" for x in items) + "</tr>"

    style = ("body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}td:nth-child(-n+5),th{text-align:left}")
    body = "\n".join([tr("th", HEAD), *(tr("td", cells(r)) for r in rows)])
    paragraphs = "".join(f"<p>{escape(p)}</p>" for p in notes.split("\n\n") if p.strip())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{escape(title)}</h1><table id='comparison'>\n{body}\n"
            f"</table>{paragraphs}</body></html>\n")


NOTES = """Accuracy in %: val is the single-clip validation after the last epoch (centre crop); test is the
multi-clip protocol, "clips x views @ short side" (full: the whole frame, the paper's; three_crop: the
authors' code's; softmax averaged per video), on the weights of the best validation's checkpoint ("best",
as the authors' code tests) or of the last epoch ("last"). "± s": standard deviation over the row's runs. GFLOPs: one
forward pass of one clip (a multiply-add is 2 FLOPs). Train clips/s: median over the logged windows, all
workers together ({hardware}). Paper: Li et al., CVPR 2019, validation sets, ImageNet initialisation,
shown only beside rows tested as the paper tests ({paper}; results/paper_results.csv)."""


def view_section(uri: str, runs: list[RunResult], out: Path) -> str:
    """Per CoST run, the summary of its analysis/ artifacts, whose files are copied to out/analysis/<run>/."""
    parts = []
    client = tracking.client(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a report, not a progress bar
    for r in sorted(runs, key=lambda r: (r.key, r.name)):
        if not r.key[2].startswith("cost"):
            continue
        folder = out / "analysis" / r.name
        try:
            with tempfile.TemporaryDirectory() as tmp:
                got = Path(client.download_artifacts(r.run_id, "analysis", tmp))
                shutil.copytree(got, folder, dirs_exist_ok=True)
        except Exception as e:  # the run has no analysis (e.g. trained without test_at_end)
            parts.append(f"**{r.name}**: no view-coefficient analysis ({str(e).splitlines()[0][:120]}); "
                         f"run `python results/analyze.py --run {r.run_id}`")
            continue
        layers = _read_csv(folder / "view_coefficients_layers.csv")
        by_class = _read_csv(folder / "temporal_share_classes.csv")
        plots = ", ".join(f"[{p.stem}](analysis/{r.name}/{p.name})" for p in sorted(folder.glob("*.png")))
        text = summary(layers, by_class).replace("\n", "  \n")
        parts.append(f"**{r.name}** ({' / '.join(map(str, r.key))}): {text}  \nplots: {plots}")
    return "\n\n".join(parts)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True, help="the MLflow experiment (tracking.experiment of the runs)")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the local SQLite store")
    p.add_argument("--out", help="folder for report.md, report.csv and the plots (default: reports/EXPERIMENT "
                                 "under the home)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    args = p.parse_args(argv)
    uri = tracking.tracking_uri(args.tracking_uri)
    try:
        runs = collect(uri, args.experiment)
    except ValueError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    if not runs:
        print(f"report: experiment {args.experiment!r} has no finished training runs yet", file=sys.stderr)
        return 1
    out = Path(args.out or os.path.join(HOME, "reports", args.experiment))
    out.mkdir(parents=True, exist_ok=True)
    rows = table(runs, load_paper())
    hardware = ", ".join(sorted({r.hardware for r in runs} - {""})) or "not recorded"
    notes = "\n".join(f"- note: {n}" for n in mixed_settings(runs))
    views = view_section(uri, runs, out)
    text = (f"# {args.experiment}: {len(runs)} runs, {time.strftime('%Y-%m-%d')}\n\n{markdown(rows)}\n\n"
            f"{NOTES.format(hardware=hardware, paper=PAPER_PROTOCOL)}\n{notes}\n\n"
            f"## View coefficients (paper Figs. 7-8)\n\n"
            f"{views or 'no CoST runs'}\n")
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(html(f"{args.experiment}: {len(runs)} runs", rows,
                                          NOTES.format(hardware=hardware, paper=PAPER_PROTOCOL) + "\n\n" + notes))
    write_csv(rows, out / "report.csv")
    print(text)
    print(f"[report] {out / 'report.md'}, {out / 'report.html'}, {out / 'report.csv'}; plots under {out / 'analysis'}")
    if not args.no_log:
        client = tracking.client(uri)
        run = client.create_run(tracking.experiment_id(uri, args.experiment), run_name="report",
                                tags={"mode": "report"})
        client.log_artifacts(run.info.run_id, str(out))
        client.set_terminated(run.info.run_id)
        print(f"[report] logged to MLflow run {run.info.run_id} ('report') in experiment {args.experiment!r}")
        if uri.startswith(("http://", "https://")):
            exp_id = run.info.experiment_id
            print(f"[report] in the MLflow UI: the runs {tracking.ui_url(uri, exp_id)}, the table "
                  f"{tracking.ui_url(uri, exp_id, run.info.run_id, 'report.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
