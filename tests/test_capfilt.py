"""CapFilt: the noisy manifest swaps the asked fraction of captions to other images' captions;
bootstrap captions and filters with a BLIP run's checkpoint and writes a manifest the trainer
reads, with the filter's precision and recall recomputed from its saved scores."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vlpjax.capfilt import filter_scores, main, write_noisy
from vlpjax.data.sources import jsonl_records
from vlpjax.train.checkpoint import Checkpointer
from vlpjax.train.trainer import Setup
from vlpjax.utils.config import load_config


def test_filter_scores():
    swapped = np.array([1, 1, 0, 0, 0, 1], bool)
    rejected = np.array([1, 0, 1, 0, 0, 1], bool)
    scores = filter_scores(swapped, rejected)
    assert scores["filter_precision"] == pytest.approx(2 / 3)
    assert scores["filter_recall"] == pytest.approx(2 / 3)
    assert scores["rejected_fraction"] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("capfilt") / "data")
    counts = write_noisy(out, "vlp_shapes/tiny", "train", "validation", swap=0.3, seed=0)
    return out, counts


def test_noisy_manifest_swaps_the_asked_fraction(noisy):
    out, counts = noisy
    assert counts == {"web.jsonl": 512, "validation.jsonl": 128}
    rows = [json.loads(line) for line in open(os.path.join(out, "web.jsonl"))]
    truth = [
        {c.decode() for c in ex["captions"]}
        for ex in tfds.as_numpy(tfds.load("vlp_shapes/tiny", split="train"))
    ]
    swapped = np.array([row["swapped"] for row in rows])
    assert swapped.sum() == round(0.3 * 512)
    for i, row in enumerate(rows):
        (caption,) = row["captions"]
        assert os.path.isfile(os.path.join(out, row["image"]))
        if not row["swapped"]:
            assert caption in truth[i]
        else:  # another image's caption
            assert any(caption in t for j, t in enumerate(truth) if j != i)
    # The swapped captions are mostly wrong for their image (vlp_shapes repeats a few).
    assert (
        np.mean(
            [row["captions"][0] not in truth[i] for i, row in enumerate(rows) if row["swapped"]]
        )
        > 0.8
    )


def test_bootstrap_writes_a_manifest_the_trainer_reads(noisy, tmp_path):
    data, _ = noisy
    # A freshly initialised BLIP's checkpoint stands in for the fine-tuned captioner and filter.
    workdir = str(tmp_path / "blip")
    checkpointer = Checkpointer(workdir, async_save=False)
    checkpointer.save(
        0, Setup(load_config("configs/blip.py:smoke"), None, with_data=False).init_state()
    )
    checkpointer.close()

    def bootstrap(out, threshold):
        args = [
            "bootstrap",
            "--config=configs/blip.py:smoke",
            f"--captioner={workdir}",
            f"--filter={workdir}",
            f"--data={data}/web.jsonl",
            f"--out={out}",
            "--max_examples=24",
            "--strategy=greedy",
            f"--threshold={threshold}",
            "--config.eval_batch_size=8",
        ]
        assert main(args) == 0
        report = json.load(open(os.path.join(out, "capfilt_report.json")))
        scored = [json.loads(line) for line in open(os.path.join(out, "captions.jsonl"))]
        kept = [json.loads(line) for line in open(os.path.join(out, "bootstrapped.jsonl"))]
        return report, scored, kept

    _, scored, _ = bootstrap(str(tmp_path / "probe"), 0.5)
    # A threshold between the scores, so that some pairs pass and some do not.
    threshold = float(
        np.median([s["web_itm"] for s in scored] + [s["synthetic_itm"] for s in scored])
    )
    out = str(tmp_path / "boot")
    report, scored, kept = bootstrap(out, threshold)
    assert report["images"] == len(scored) == 24
    web_itm = np.array([s["web_itm"] for s in scored])
    swapped = np.array([s["swapped"] for s in scored])
    assert report == pytest.approx({**report, **filter_scores(swapped, web_itm <= threshold)})
    passing = [s for s in scored if max(s["web_itm"], s["synthetic_itm"]) > threshold]
    assert 0 < len(kept) == len(passing) == report["kept_images"] < 24
    for row, s in zip(kept, passing):
        pairs = ((s["web"], s["web_itm"]), (s["synthetic"], s["synthetic_itm"]))
        assert row["captions"] == [t for t, p in pairs if p > threshold and t]
        assert row["image"] == s["image"]
    assert jsonl_records(os.path.join(out, "bootstrapped.jsonl"), 0, 1).length == len(kept)


def test_bootstrap_errors_are_one_line(tmp_path, capsys):
    code = main(
        [
            "bootstrap",
            "--config=configs/clip.py:smoke",
            "--captioner=x",
            "--filter=y",
            f"--data={tmp_path}/none.jsonl",
            f"--out={tmp_path}",
        ]
    )
    assert code == 2
    assert "needs a BLIP config" in capsys.readouterr().err
