"""CapFilt (BLIP, Li et al. 2022): bootstrap a noisy image-text dataset with a captioner and a
filter, then pretrain again on it.

  python -m vlpjax.capfilt noisy --out=DIR [--swap=0.3]        # a noisy web-like vlp_shapes
  python -m vlpjax.capfilt bootstrap --config=configs/blip.py \\
      --captioner=WORKDIR --filter=WORKDIR --data=DIR/web.jsonl --out=DIR2 [--config.KEY=V ...]

The whole sequence, each step a `vlpjax.main` run or a command here (README: CapFilt):

  1. pretrain BLIP on the noisy web data:
       python -m vlpjax.main --config=configs/blip.py --workdir=W/pretrain \\
         --config.data.source=jsonl --config.data.train_split=DIR/web.jsonl \\
         --config.data.eval_split=DIR/validation.jsonl
  2. fine-tune the captioner (LM only) and the filter (ITC + ITM) on human-annotated pairs,
     each from the pretrained weights (`init_from` format "vlpjax");
  3. `bootstrap`: for every web image, generate a synthetic caption with the captioner; keep
     the web caption and the synthetic one each only if the filter's ITM head calls the pair a
     match (probability > --threshold); write DIR2/bootstrapped.jsonl;
  4. pretrain again with --config.data.train_split=DIR2/bootstrapped.jsonl.

`noisy` writes a web-like manifest from a TFDS split: one caption per image, `--swap` of them
replaced by another image's caption and flagged `"swapped": true`; `bootstrap` then reports the
filter's precision and recall at finding the swapped pairs (capfilt_report.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_noisy(out: str, name: str, split: str, eval_split: str, swap: float, seed: int) -> dict:
    """web.jsonl (one caption per image, `swap` of them another image's) and validation.jsonl
    (every caption), images as PNG under out/images. Returns counts."""
    import tensorflow_datasets as tfds
    from PIL import Image

    from vlpjax.data import vlp_shapes  # noqa: F401  (registers the builder)

    if not 0.0 <= swap < 1.0:
        raise ValueError(f"--swap must be in [0, 1), got {swap}")
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    counts = {}
    for which, manifest in ((split, "web.jsonl"), (eval_split, "validation.jsonl")):
        examples = tfds.as_numpy(tfds.load(name, split=which))
        rows = []
        for i, example in enumerate(examples):
            image = f"images/{which}_{i:06d}.png"
            Image.fromarray(example["image"]).save(os.path.join(out, image))
            captions = [c.decode() for c in example["captions"]]
            rows.append({"image": image, "captions": captions})
        if manifest == "web.jsonl":  # one caption each, like alt-text; then swap some
            for row in rows:
                row["captions"] = [row["captions"][rng.integers(len(row["captions"]))]]
            swapped = rng.permutation(len(rows))[: int(round(swap * len(rows)))]
            donors = (swapped + rng.integers(1, len(rows), len(swapped))) % len(rows)
            originals = [rows[d]["captions"] for d in donors]
            for row in rows:
                row["swapped"] = False
            for target, caption in zip(swapped, originals):
                rows[target]["captions"] = caption
                rows[target]["swapped"] = True
        with open(os.path.join(out, manifest), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        counts[manifest] = len(rows)
    return counts


def filter_scores(swapped: np.ndarray, rejected: np.ndarray) -> dict[str, float]:
    """The filter's precision and recall at finding the swapped (wrong) pairs."""
    caught = float(np.sum(swapped & rejected))
    return {
        "filter_precision": caught / max(float(rejected.sum()), 1.0),
        "filter_recall": caught / max(float(swapped.sum()), 1.0),
        "rejected_fraction": float(rejected.mean()),
        "swapped_fraction": float(swapped.mean()),
    }


def bootstrap(
    config,
    captioner: str,
    filter_dir: str,
    data: str,
    out: str,
    threshold: float,
    decode: dict,
    max_examples: int = 0,
) -> dict:
    """Steps 3 of the module docstring. Returns the report (also written to out)."""
    from vlpjax.data.sources import make_records, manifest_rows
    from vlpjax.evaluators.common import EvalData
    from vlpjax.train.trainer import Setup, latest_params
    from vlpjax.utils.errors import VlpError

    if config.model.name != "blip":
        raise VlpError(
            f"capfilt bootstrap needs a BLIP config (model.name='blip'), got '{config.model.name}'"
        )
    setup = Setup(config, None, with_data=False)
    predictor = setup.predictor()
    d = setup.data
    rows = manifest_rows(data)
    records = EvalData(
        records_fn=lambda: make_records({**d, "source": "jsonl"}, data, 0, 1),
        image_size=d["image_size"],
        crop=d["eval_crop"],
        mean=tuple(d["mean"]),
        std=tuple(d["std"]),
        max_examples=max_examples,
    )
    images, web_captions = records.load()
    rows = rows[: len(images)]
    caption_params = {"params": latest_params(captioner)}
    filter_params = {"params": latest_params(filter_dir)}
    synthetic = predictor.generate(caption_params, images, None, decode)
    tokens = predictor.image_tokens(filter_params, images)
    web = [c[0] for c in web_captions]
    web_scores = predictor.itm_scores(filter_params, tokens, predictor.tokenize(web))
    synthetic_scores = predictor.itm_scores(filter_params, tokens, predictor.tokenize(synthetic))
    os.makedirs(out, exist_ok=True)
    kept_rows = 0
    with open(os.path.join(out, "bootstrapped.jsonl"), "w", encoding="utf-8") as f:
        for row, w, ws, s, ss in zip(rows, web, web_scores, synthetic, synthetic_scores):
            kept = [t for t, score in ((w, ws), (s, ss)) if score > threshold and t]
            if kept:
                f.write(json.dumps({"image": row["image"], "captions": kept}) + "\n")
                kept_rows += 1
    report = {
        "images": len(images),
        "kept_images": kept_rows,
        "web_kept": float(np.mean(web_scores > threshold)),
        "synthetic_kept": float(np.mean(synthetic_scores > threshold)),
        "threshold": threshold,
    }
    if all("swapped" in row for row in rows):
        swapped = np.array([bool(row["swapped"]) for row in rows])
        report.update(filter_scores(swapped, web_scores <= threshold))
    with open(os.path.join(out, "capfilt_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "captions.jsonl"), "w", encoding="utf-8") as f:
        for row, w, ws, s, ss in zip(rows, web, web_scores, synthetic, synthetic_scores):
            f.write(
                json.dumps(
                    {
                        "image": row["image"],
                        "web": w,
                        "web_itm": float(ws),
                        "synthetic": s,
                        "synthetic_itm": float(ss),
                        "swapped": row.get("swapped"),
                    }
                )
                + "\n"
            )
    return report


def main(argv=None) -> int:
    from vlpjax.main import parse_overrides
    from vlpjax.utils.config import apply_override, load_config
    from vlpjax.utils.errors import VlpError

    parser = argparse.ArgumentParser(
        prog="python -m vlpjax.capfilt", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    noisy = sub.add_parser("noisy", help="a noisy web-like manifest from a TFDS split")
    noisy.add_argument("--out", required=True)
    noisy.add_argument("--name", default="vlp_shapes")
    noisy.add_argument("--split", default="train")
    noisy.add_argument("--eval_split", default="validation")
    noisy.add_argument("--swap", type=float, default=0.3)
    noisy.add_argument("--seed", type=int, default=0)
    boot = sub.add_parser("bootstrap", help="caption, filter and write the bootstrapped data")
    boot.add_argument("--config", required=True, help="configs/blip.py[:ARG] (the model's)")
    boot.add_argument("--captioner", required=True, help="workdir of the fine-tuned captioner")
    boot.add_argument("--filter", required=True, help="workdir of the fine-tuned filter")
    boot.add_argument("--data", required=True, help="the web JSONL manifest")
    boot.add_argument("--out", required=True)
    boot.add_argument("--threshold", type=float, default=0.5, help="ITM match probability")
    boot.add_argument(
        "--strategy", default="nucleus", help="decoding: nucleus (BLIP) | beam | greedy"
    )
    boot.add_argument("--max_examples", type=int, default=0)
    try:
        args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
        overrides = parse_overrides(rest)
        if args.command == "noisy":
            if overrides:
                raise VlpError(f"capfilt noisy takes no --config overrides, got {rest}")
            counts = write_noisy(
                args.out, args.name, args.split, args.eval_split, args.swap, args.seed
            )
            print(f"capfilt noisy: {counts} -> {args.out}")
            return 0
        config = load_config(args.config)
        for key, value in overrides:
            apply_override(config, key, value)
        decode = {"strategy": args.strategy, "max_length": config.data.text_length - 1}
        if args.strategy == "nucleus":  # BLIP: nucleus sampling, p = 0.9
            decode.update(strategy="sample", top_p=0.9)
        elif args.strategy == "beam":
            decode.update(beam_size=4, length_penalty=0.6)
        report = bootstrap(
            config,
            args.captioner,
            args.filter,
            args.data,
            args.out,
            args.threshold,
            decode,
            args.max_examples,
        )
        print("capfilt bootstrap: " + ", ".join(f"{k}={v}" for k, v in report.items()))
        return 0
    except (VlpError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
