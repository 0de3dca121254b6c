"""The one trainer: every system trains through `train_and_evaluate(config, workdir)`.

Systems differ only by the model, objectives and evaluators their config names. Everything a
user can get wrong (keys, mesh, batch, paths, datasets) is checked before the first compile.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import linen as nn
from jax.experimental import multihost_utils

from vlpjax.data.device_transforms import build_device_transform
from vlpjax.data.pipeline import TrainIterator
from vlpjax.data.sources import make_records
from vlpjax.data.tasks import check_tasks, text_task
from vlpjax.data.text_corpus import TextCorpusMix, corpus_options, corpus_texts
from vlpjax.data.tokenizer import DEFAULT_TOKENIZER, Tokenizer
from vlpjax.evaluators import build_evaluators
from vlpjax.models import build_model, model_inputs
from vlpjax.objectives import build_objectives
from vlpjax.sharding import (
    batch_sharding,
    global_batch,
    logical_shardings,
    make_mesh,
    mesh_rules,
    replicated,
)
from vlpjax.train.checkpoint import Checkpointer
from vlpjax.train.metrics_writer import MetricsWriter
from vlpjax.train.momentum import queue_init
from vlpjax.train.optimizer import build_optimizer
from vlpjax.train.perf import perf_metrics
from vlpjax.train.predictor import Predictor
from vlpjax.train.state import TrainState
from vlpjax.train.step import train_step, uses_momentum
from vlpjax.utils.checkpoints import read_run_checkpoint
from vlpjax.utils.config import REQUIRED, check_type, take
from vlpjax.utils.errors import VlpError

TOP_LEVEL = {
    "total_steps": REQUIRED,
    "batch_size": REQUIRED,  # global
    "seed": 0,
    "log_every": 50,
    "eval_every": 0,  # 0 = only at the end
    "checkpoint_every": 500,
    "keep_checkpoints": 3,
    "async_checkpoints": True,
    "grad_accum_steps": 1,
    "grad_cache_steps": 1,  # GradCache micro-batches for embedding-coupled losses (1 = off)
    "ema_decay": 0.0,  # > 0 keeps a momentum (EMA) copy of the parameters in the state
    "queue_size": 0,  # > 0: feature queues of the momentum outputs (ALBEF, BLIP; needs ema_decay)
    "max_nonfinite_steps": 5,  # this many consecutive non-finite steps abort the run
    "eval_batch_size": 256,
    "progress_bar": True,
    "mesh": REQUIRED,
    "model": REQUIRED,
    "data": REQUIRED,
    "optimizer": REQUIRED,
    "objectives": REQUIRED,
    "evals": None,
    # Start from converted weights (when not resuming): {"format": "hf_clip", "path": DIR}.
    "init_from": None,
}

DATA = {
    "source": "tfds",  # tfds | jsonl | webdataset
    "name": "vlp_shapes",  # TFDS name (tfds source)
    "data_dir": None,  # TFDS data dir (None = TFDS_DATA_DIR or ~/tensorflow_datasets)
    "train_split": "train",  # TFDS split, or the manifest / shard glob for user data
    "eval_split": "validation",
    "fields": {"image": "image", "captions": "captions"},
    "image_size": 64,
    "text_length": 32,
    "tokenizer": "vlp_shapes",  # a sentencepiece .model path, or "vlp_shapes"
    "shuffle_buffer": 10_000,
    "crop": "resize",  # resize | center
    "eval_crop": "resize",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "max_skip_ratio": 0.01,
    # Seq2seq task mixture {task: weight} (vlpjax.data.tasks): batches of source/target text.
    "add_bos": False,  # text rows start with bos (decoder-only language models)
    "tasks": None,
    "instructions": False,  # OFA-style instructions as the caption task's source
    "source_length": 0,  # source tokens (0 = text_length)
    # OFA location tokens after the tokenizer's pieces, written <loc_i> (0 = none).
    "location_bins": 0,
    # A jitted batch transform before the model: {"name": "prefix_lm" | "denoise", ...}.
    "device_transform": None,
    # Text-only rows per batch from a text corpus (SimVLM's C4): vlpjax.data.text_corpus.
    "text_corpus": None,
}

MESH = {"data": -1, "fsdp": 1, "tensor": 1, "rules": ()}


def resolve(config) -> tuple[dict, dict, dict]:
    """Checks every section's keys; returns (top level, data, mesh) as plain dicts."""
    top = take(config, TOP_LEVEL, "config")
    data = take(config.data, DATA, "data")
    mesh = take(config.mesh, MESH, "mesh")
    for key in (
        "total_steps",
        "batch_size",
        "grad_accum_steps",
        "grad_cache_steps",
        "eval_batch_size",
    ):
        check_type(top[key], 1, f"config.{key}")  # REQUIRED: no default to type it
        if int(top[key]) < 1:
            raise VlpError(f"config.{key} must be >= 1, got {top[key]}")
    return top, data, mesh


def load_tokenizer(path: str, location_bins: int = 0) -> Tokenizer:
    if not path:
        raise VlpError("data.tokenizer is not set: give a sentencepiece .model path")
    path = DEFAULT_TOKENIZER if path == "vlp_shapes" else path
    if not os.path.isfile(path):
        raise VlpError(f"data.tokenizer: file not found: {path}")
    if int(location_bins) < 0 or int(location_bins) == 1:
        raise VlpError(f"data.location_bins must be 0 (none) or >= 2, got {location_bins}")
    return Tokenizer(path, location_bins=int(location_bins))


class Setup:
    """Everything built from a config before training: checked, sharded, not yet compiled."""

    def __init__(self, config, workdir: str | None, devices=None, with_data: bool = True):
        """with_data=False skips the dataset (records) and the evaluators: enough to compile."""
        self.config = config
        self.top, self.data, mesh_cfg = resolve(config)
        self.mesh = make_mesh(mesh_cfg, devices)
        self.rules = mesh_rules(mesh_cfg["rules"])
        batch_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        batch, accum = self.top["batch_size"], self.top["grad_accum_steps"]
        cache = self.top["grad_cache_steps"]
        if accum > 1 and cache > 1:
            raise VlpError("grad_accum_steps and grad_cache_steps cannot both be > 1")
        split = max(accum, cache)
        if batch % (batch_shards * split):
            name = "grad_accum_steps" if accum > 1 else "grad_cache_steps"
            raise VlpError(
                f"batch_size {batch} is not divisible by data x fsdp = {batch_shards}"
                + (f" x {name} {split}" if split > 1 else "")
            )
        if batch % jax.process_count():
            raise VlpError(
                f"batch_size {batch} is not divisible by {jax.process_count()} processes"
            )
        if self.top["eval_batch_size"] % batch_shards:
            raise VlpError(
                f"eval_batch_size {self.top['eval_batch_size']} is not divisible by data x fsdp = {batch_shards}"
            )
        self.tokenizer = load_tokenizer(self.data["tokenizer"], self.data["location_bins"])
        self.text_task = None
        if self.data["tasks"]:
            tasks = dict(self.data["tasks"])
            check_tasks(tasks, self.data["fields"])
            self.text_task = text_task(
                tasks,
                bool(self.data["instructions"]),
                self.top["seed"],
                int(self.data["location_bins"]),
            )
        self.text_corpus = corpus_options(self.data["text_corpus"], batch, jax.process_count())
        if self.text_corpus and self.text_task is None:
            raise VlpError("data.text_corpus adds seq2seq rows: it needs data.tasks")
        self.device_transform = build_device_transform(
            self.data["device_transform"], self.tokenizer
        )
        self.model = build_model(config.model)
        if "mesh" in {f.name for f in dataclasses.fields(self.model)}:
            self.model = self.model.clone(mesh=self.mesh)  # e.g. hard negatives in shard_map
        self.inputs = model_inputs(config.model)
        self._check_momentum(config.model.name, split)
        text_vocab = getattr(getattr(self.model, "text_encoder", None), "vocab_size", None)
        if text_vocab is not None and self.tokenizer.vocab_size > text_vocab:
            raise VlpError(
                f"model.text.vocab_size {text_vocab} < the tokenizer's {self.tokenizer.vocab_size} pieces"
            )
        if cache > 1 and not getattr(self.model, "coupled_outputs", None):
            raise VlpError(
                f"grad_cache_steps: model '{config.model.name}' does not declare the outputs its "
                "loss couples examples through (coupled_outputs); use grad_accum_steps"
            )
        self.objectives = build_objectives(config.objectives, self.mesh)
        self.records, self.evaluators, self.corpus = None, [], None
        if with_data:  # they read the datasets
            self.records = make_records(
                self.data, self.data["train_split"], jax.process_index(), jax.process_count()
            )
            if self.text_corpus:
                self.corpus = corpus_texts(
                    self.text_corpus, jax.process_index(), jax.process_count()
                )
            self.evaluators = build_evaluators(config.evals, self.data, workdir)
            for evaluator in self.evaluators:
                missing = [
                    m for m in getattr(evaluator, "model_methods", ()) if not hasattr(self.model, m)
                ]
                if missing:
                    raise VlpError(
                        f"evals.{evaluator.name}: model '{config.model.name}' has no {missing} "
                        "(ITM re-ranking needs a fusion model; set rerank_k=0)"
                    )
        self.pretrained = self._load_pretrained(self.top["init_from"])
        self._build_state_functions()

    def _check_momentum(self, name: str, split: int) -> None:
        queue, ema = self.top["queue_size"], self.top["ema_decay"]
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 0:
            raise VlpError(f"queue_size must be an integer >= 0, got {queue!r}")
        if queue and not getattr(self.model, "queued_outputs", None):
            raise VlpError(f"queue_size {queue}: model '{name}' has no feature queues")
        if queue and not ema > 0:
            raise VlpError(
                f"queue_size {queue}: the queues hold the momentum model's features; set "
                "ema_decay > 0 (ALBEF and BLIP use 0.995)"
            )
        if ema > 0 and uses_momentum(self.model) and split > 1:
            raise VlpError(
                f"model '{name}' runs its momentum model and queues on the whole batch: "
                "grad_accum_steps and grad_cache_steps must be 1"
            )

    def _load_pretrained(self, init_from):
        """Parameters (numpy) to start from, or None.

        init_from = {"format": "hf_clip" | ... (vlpjax.convert) | "vlpjax", "path": DIR,
        "keys": top-level parameter groups to take (empty = all)}, or several such sources by
        name, e.g. ClipCap's {"clip": {...}, "gpt2": {...}}. "vlpjax" reads the latest
        checkpoint of another run's workdir (e.g. LiT's image tower from a CLIP run); groups not
        taken keep their fresh initialisation.
        """
        self.pretrained_model_state = {}
        if not init_from:
            return None
        single = "format" in init_from
        sources = {"": init_from} if single else dict(init_from)
        taken: dict = {}
        for name, source in sources.items():
            where = "init_from" + (f".{name}" if name else "")
            params, model_state = self._load_source(source, where)
            overlap = sorted(set(params) & set(taken))
            if overlap:
                raise VlpError(f"{where}: parameter group(s) {overlap} come from two sources")
            taken.update(params)
            self.pretrained_model_state.update(model_state)
        return taken

    def _load_source(self, source, where: str) -> tuple[dict, dict]:
        from vlpjax.convert import CONVERTERS

        opts = take(source, {"format": REQUIRED, "path": REQUIRED, "keys": ()}, where)
        fmt, path = opts["format"], opts["path"]
        model_state = {}
        if fmt == "vlpjax":
            params = latest_params(path)
        elif fmt in CONVERTERS:
            towers = [self.config.model.get(t, {}) for t in ("image", "text")]
            scan = any(bool(t.get("scan", False)) for t in towers)
            scan = scan or bool(self.config.model.get("scan", False))  # flat model sections
            params = CONVERTERS[fmt][0](path, scan=scan)[1]
            if "params" in params:  # converters of models with state (BatchNorm) give variables
                model_state = {k: v for k, v in params.items() if k != "params"}
                params = params["params"]
        else:
            raise VlpError(f"{where}.format '{fmt}' not in {sorted(CONVERTERS) + ['vlpjax']}")
        keys = tuple(opts["keys"]) or tuple(params)
        missing = [k for k in keys if k not in params]
        if missing:
            raise VlpError(
                f"{where} {path}: no parameter group(s) {missing}; it has {sorted(params)}"
            )
        return {k: params[k] for k in keys}, model_state

    def dummy_batch(self, batch: int = 1) -> dict:
        """Zeros shaped like the pipeline's batches (before any device transform)."""
        size, length = self.data["image_size"], self.data["text_length"]
        shapes = {"image": jnp.zeros((batch, size, size, 3), jnp.float32)}
        if self.text_task is not None:
            source_length = self.data["source_length"] or length
            shapes["source"] = jnp.zeros((batch, source_length), jnp.int32)
            shapes["target"] = jnp.zeros((batch, length), jnp.int32)
            if self.text_corpus:
                shapes["text_only"] = jnp.zeros((batch,), bool)
        else:
            shapes["text"] = jnp.zeros((batch, length), jnp.int32)
        return shapes

    def dummy_inputs(self, batch: int = 1) -> dict:
        """Zeros shaped like the model's inputs."""
        shapes = self.dummy_batch(batch)
        if self.device_transform is not None:
            shapes = self.device_transform(jax.random.key(0), shapes)
        missing = [k for k in self.inputs if k not in shapes]
        if missing:
            raise VlpError(
                f"model '{self.config.model.name}' takes {list(self.inputs)}, but the data gives "
                f"{sorted(shapes)}: set data.tasks (source/target) or data.device_transform"
            )
        return {k: shapes[k] for k in self.inputs}

    def _build_state_functions(self):
        model, rules = self.model, self.rules

        def init_variables(rng):
            return model.init({"params": rng}, **self.dummy_inputs(), train=False)

        rng = jax.random.key(self.top["seed"])
        with nn.logical_axis_rules(rules):
            abstract_variables = jax.eval_shape(init_variables, rng)
        abstract_boxed = abstract_variables["params"]
        abstract_model_state = {k: v for k, v in abstract_variables.items() if k != "params"}
        if abstract_model_state and self.top["grad_cache_steps"] > 1:
            raise VlpError(
                f"grad_cache_steps: the model keeps {sorted(abstract_model_state)} (e.g. BatchNorm "
                "statistics), which couple examples outside the embeddings"
            )
        param_shardings = logical_shardings(abstract_boxed, self.mesh, rules)
        model_state_shardings = logical_shardings(abstract_model_state, self.mesh, rules)
        abstract_params = nn.unbox(abstract_boxed)
        self.tx, self.lr_schedule = build_optimizer(
            self.config.optimizer, self.top["total_steps"], abstract_params
        )

        if self.pretrained is not None:
            want = {
                k: jax.tree.map(lambda x: tuple(x.shape), abstract_params.get(k))
                for k in self.pretrained
            }
            got = jax.tree.map(lambda x: tuple(np.shape(x)), self.pretrained)
            if want != got:
                raise VlpError(
                    f"init_from {sorted(want)}: the loaded shapes do not match config.model "
                    "(python -m vlpjax.convert inspect prints the matching model config)"
                )

        ema = self.top["ema_decay"] > 0
        queue_size = self.top["queue_size"]

        def init_state(rng):
            variables = nn.unbox(init_variables(rng))
            params = variables.pop("params")
            queues = None
            if queue_size:
                _, out = model.apply({"params": params, **variables}, **self.dummy_inputs())
                queues = tuple(
                    queue_init(queue_size, out[key].shape[-1]) for key in model.queued_outputs
                )
            return TrainState.create(
                params, self.tx, rng, model_state=variables, ema=ema, queues=queues
            )

        abstract_state = jax.eval_shape(init_state, rng)
        repl = replicated(self.mesh)
        # Optimizer moments inherit their parameter's logical axes: optax keeps flax's boxes.
        opt_shardings = logical_shardings(
            jax.eval_shape(self.tx.init, abstract_boxed), self.mesh, rules
        )
        self.state_shardings = TrainState(
            step=repl,
            params=param_shardings,
            opt_state=opt_shardings,
            rng=repl,
            nonfinite_total=repl,
            nonfinite_run=repl,
            model_state=model_state_shardings,
            ema_params=param_shardings if ema else None,
            queues=jax.tree.map(lambda _: repl, abstract_state.queues),
        )
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            abstract_state,
            self.state_shardings,
        )
        self._init_state = jax.jit(init_state, out_shardings=self.state_shardings)
        self.rng = rng
        self.num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params))

    def init_state(self) -> TrainState:
        with self.mesh, nn.logical_axis_rules(self.rules):
            state = self._init_state(self.rng)
        if self.pretrained is not None:  # placed straight onto the shards, never a jit constant
            shardings = self.state_shardings.params

            def place():  # fresh buffers each time: params and EMA are donated separately
                return {k: jax.device_put(v, shardings[k]) for k, v in self.pretrained.items()}

            state = state.replace(params={**state.params, **place()})
            if state.ema_params is not None:
                state = state.replace(ema_params={**state.ema_params, **place()})
            if self.pretrained_model_state:
                state = state.replace(
                    model_state=jax.device_put(
                        self.pretrained_model_state, self.state_shardings.model_state
                    )
                )
        return state

    def batch_shardings(self) -> dict:
        shapes = {k: v.ndim for k, v in self.dummy_batch().items()}
        return {k: batch_sharding(self.mesh, ndim) for k, ndim in shapes.items()}

    def jit_train_step(self):
        step = functools.partial(
            train_step,
            model=self.model,
            objectives=self.objectives,
            inputs=self.inputs,
            tx=self.tx,
            accum_steps=self.top["grad_accum_steps"],
            cache_steps=self.top["grad_cache_steps"],
            ema_decay=self.top["ema_decay"],
            transform=self.device_transform,
        )
        return jax.jit(
            step,
            in_shardings=(self.state_shardings, self.batch_shardings()),
            out_shardings=(self.state_shardings, replicated(self.mesh)),
            donate_argnums=(0,),
        )

    def train_iterator(self):
        d, processes = self.data, jax.process_count()
        text_rows = self.text_corpus["rows"] if self.text_corpus else 0
        image_text = TrainIterator(
            self.records,
            batch_size=(self.top["batch_size"] - text_rows) // processes,
            image_size=d["image_size"],
            text_length=d["text_length"],
            tokenizer=self.tokenizer,
            seed=self.top["seed"],
            shuffle_buffer=d["shuffle_buffer"],
            crop=d["crop"],
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            max_skip_ratio=d["max_skip_ratio"],
            add_bos=bool(d["add_bos"]),
            text_task=self.text_task,
            source_length=d["source_length"],
        )
        if not text_rows:
            return image_text
        return TextCorpusMix(
            image_text,
            self.corpus,
            rows=text_rows // processes,
            tokenizer=self.tokenizer,
            text_length=d["text_length"],
            seed=self.top["seed"],
            shuffle_buffer=d["shuffle_buffer"],
        )

    def predictor(self) -> Predictor:
        return Predictor(
            self.model,
            self.mesh,
            self.tokenizer,
            self.data["text_length"],
            self.top["eval_batch_size"],
            add_bos=bool(self.data["add_bos"]),
        )

    def train_flops_per_example(self) -> float:
        flops = getattr(self.model, "flops_per_example", None)
        return 3.0 * flops(self.data["text_length"]) if flops else 0.0


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (resuming from `workdir` when it holds a checkpoint) and evaluates. Returns the
    last logged metrics."""
    if "://" in workdir:
        # Metrics and pictures could go to a bucket, but the checkpointer's atomic renames and
        # data positions are written for a file system.
        raise VlpError(
            f"workdir {workdir}: URLs are not supported yet; use a path on a file system every "
            "process sees (NFS, Filestore, or the bucket mounted with gcsfuse)"
        )
    setup = Setup(config, workdir)  # every check happens here, before anything compiles
    top = setup.top
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # a local folder or gs://
    if jax.process_index() == 0:
        (epath.Path(workdir) / "config.json").write_text(
            config.to_json_best_effort(indent=2, sort_keys=True)
        )

    checkpointer = Checkpointer(workdir, top["keep_checkpoints"], top["async_checkpoints"])
    data_iterator = setup.train_iterator()
    with setup.mesh, nn.logical_axis_rules(setup.rules):
        state = checkpointer.restore(setup.abstract_state, data_iterator)
        resumed = state is not None
        if not resumed:
            state = setup.init_state()
        step_fn = setup.jit_train_step()
        step = int(state.step)
        writer = MetricsWriter(workdir, resume_step=step if resumed else None)
        if resumed:
            print(f"resumed from {checkpointer.directory}/{step}", flush=True)
        print(
            f"{setup.num_params / 1e6:.2f}M parameters, mesh {dict(setup.mesh.shape)}, "
            f"{jax.device_count()} {jax.devices()[0].platform} devices",
            flush=True,
        )
        last = _loop(setup, state, step, step_fn, data_iterator, checkpointer, writer, workdir)
    checkpointer.close()
    return last


def _loop(setup, state, step, step_fn, data_iterator, checkpointer, writer, workdir) -> dict:
    top = setup.top
    total = top["total_steps"]
    predictor = setup.predictor() if setup.evaluators else None
    flops = setup.train_flops_per_example()
    bar = None
    if top["progress_bar"] and jax.process_index() == 0:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True)
    last: dict = {}
    window_start, window_steps = time.perf_counter(), 0
    pending = None  # the previous step's metrics, read after the next step is dispatched
    saved_step = step
    preemption = PreemptionNotice()
    while step < total:
        batch = global_batch(next(data_iterator), setup.mesh)
        state, metrics = step_fn(state, batch)
        step += 1
        window_steps += 1
        if preemption.reached(step):
            # Every process gets here at the same step: save it and stop; rerunning resumes.
            checkpointer.save(step, state, data_iterator)
            saved_step = step
            last["preempted_at_step"] = step
            print(f"preempted: saved step {step}; rerun the same command to resume", flush=True)
            break
        if pending is not None:
            _check_nonfinite(pending, top["max_nonfinite_steps"])
        pending = (step, metrics)
        if step % top["log_every"] == 0 or step == total:
            values = jax.device_get(metrics)
            _check_nonfinite(pending, top["max_nonfinite_steps"])
            elapsed = time.perf_counter() - window_start
            samples_per_sec = window_steps * top["batch_size"] / max(elapsed, 1e-9)
            last = {f"train/{k}": float(v) for k, v in values.items() if k != "nonfinite_run"}
            last["train/learning_rate"] = float(setup.lr_schedule(step - 1))
            last.update(perf_metrics(samples_per_sec, flops))
            last["data/skipped_images"] = float(data_iterator.skipped)
            writer.write(step, last)
            if bar is not None:
                post = {"loss": f"{last['train/loss']:.4f}", "samples/s": f"{samples_per_sec:.1f}"}
                if "perf/mfu" in last:
                    post["mfu"] = f"{last['perf/mfu']:.1%}"
                bar.set_postfix(post)
            window_start, window_steps = time.perf_counter(), 0
        if bar is not None:
            bar.update(1)
        if step % top["checkpoint_every"] == 0 or step == total:
            checkpointer.save(step, state, data_iterator)
            saved_step = step
        if setup.evaluators and (
            step == total or (top["eval_every"] and step % top["eval_every"] == 0)
        ):
            evals = run_evaluators(setup, predictor, state.variables(), step)
            writer.write(step, evals)
            last.update(evals)
            if bar is not None:
                bar.write(
                    f"step {step}: "
                    + ", ".join(f"{k}={v:.4f}" for k, v in evals.items() if "chance" not in k)
                )
            window_start, window_steps = time.perf_counter(), 0
    preemption.close()
    if bar is not None:
        bar.close()
    if saved_step != step:
        checkpointer.save(step, state, data_iterator)
    if jax.process_index() == 0:
        from vlpjax.evaluators.pictures import training_curves

        training_curves(writer.read(), os.path.join(workdir, "pictures", "training_curves.png"))
    return last


class PreemptionNotice:
    """Has a preemption notice (SIGTERM) arrived? With several processes, JAX's preemption sync
    point answers, so that all of them answer yes at the same step however many got the signal
    (it needs jax.distributed and a call every step); alone, a SIGTERM handler of our own."""

    def __init__(self):
        self.multi_process = jax.process_count() > 1
        self.signalled = False
        self.previous = None
        if not self.multi_process and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.signalled = True

    def reached(self, step: int) -> bool:
        if self.multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.signalled

    def close(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None


def latest_params(workdir: str) -> dict:
    """The parameters of a vlpjax run's latest checkpoint, as numpy."""
    try:
        _, state = read_run_checkpoint(workdir)
    except VlpError as e:
        raise VlpError(f"init_from: {e}") from None
    return jax.tree.map(np.asarray, state["params"])


def run_evaluators(setup, predictor, variables, step: int) -> dict[str, float]:
    metrics = {}
    for evaluator in setup.evaluators:
        for key, value in evaluator.run(predictor, variables, step).items():
            metrics[f"eval/{evaluator.name}/{key}"] = value
    return metrics


def _check_nonfinite(pending, limit: int) -> None:
    step, metrics = pending
    run = int(metrics["nonfinite_run"])
    if run >= limit:
        raise VlpError(
            f"{run} consecutive non-finite steps ({step - run + 1}..{step}); "
            f"stopped (max_nonfinite_steps={limit}); the last checkpoint is intact"
        )
