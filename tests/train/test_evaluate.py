"""The test protocol as the network receives it, through the real evaluation path (Ray Data on the
session's cluster): under "full" each clip's frames whole at the test short side, under
"three_crop" three squares of that side along the long side."""

from pathlib import Path

import cv2
import pytest
import simplejpeg
import torch
from torch import nn

from pipeline.prepare import main as prepare
from pipeline.storage import read_table
from pipeline.store import Store
from train.config import TrainConfig, load_config
from train.core import normalize
from train.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[2]


class Recorder(nn.Module):
    """Remembers every input; answers uniform scores."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes, self.inputs = classes, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return torch.zeros(len(x), self.classes)


@pytest.fixture(scope="module")
def store(ray_cluster, tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("protocol")  # 64x80 frames: short side 64, under the store's 320
    assert prepare(["--dataset", "synthetic", "--synthetic-kind", "appearance", "--classes", "2",
                    "--videos-per-class", "2", "--root", str(root / "src"), "--out", str(root / "store")]) == 0
    return Store(str(root / "store"))


@pytest.mark.parametrize("protocol", ["full", "three_crop"])
def test_the_network_receives_the_protocols_views(store, protocol):
    cfg = load_config(TrainConfig, ROOT / "configs" / "tiny_synthetic.yaml", [
        f"data.store={store.url}", "data.frames=4", "data.stride=8", "data.test_clips=3", "data.eval_short_side=48",
        "data.crop=32", "data.train_short_side=[32, 40]", f"data.test_protocol={protocol}"])
    model = Recorder(len(store.classes))
    scores = evaluate(model, store, "val", cfg, clips=3, protocol=protocol, rank=0, world=1,
                      device=torch.device("cpu"), autocast=None)
    videos = store.manifest["splits"]["val"]["videos"]
    assert len(scores.labels) == videos and len(model.inputs) == videos  # one video per forward pass
    if protocol == "full":  # 64x80 scaled to short side 48: 48x60, the whole frame
        assert all(x.shape == (3, 3, 4, 48, 60) for x in model.inputs)
    else:
        assert all(x.shape == (9, 3, 4, 48, 48) for x in model.inputs)
    # The first clip's first frame is the video's stored frame 0: the view made from it by hand.
    rows = read_table(store.shard_urls("val")[0]).to_pylist()
    first = next(r for r in rows if r["phase"] == 0 and r["video_id"] == scores.video_ids[0])
    frame = simplejpeg.decode_jpeg(first["frames"][0])  # (64, 80, 3)
    regions = [frame] if protocol == "full" else [frame[:, left:left + 64] for left in (0, 8, 16)]
    for k, region in enumerate(regions):
        want = cv2.resize(region, (60 if protocol == "full" else 48, 48), interpolation=cv2.INTER_LINEAR)
        want = normalize(torch.from_numpy(want)[None, None], cfg.data.mean, cfg.data.std)[0, :, 0]
        assert torch.allclose(model.inputs[0][k, :, 0], want, atol=1e-5), k
