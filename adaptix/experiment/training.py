"""The job's step 2: build every model of the family, train it (in worker processes when
``train.workers`` > 1) or load it from the model cache."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from adaptix.core.cache import ModelCache, cache_key
from adaptix.experiment.config import JobConfig, ModelConfig
from adaptix.experiment.datasets import DataSource, JobData, load_job_data
from adaptix.online.allocator import tune_cpu_allocator
from adaptix.online.model import MultiExitModel, build_model
from adaptix.online.training import RandomCropFlip, train_exits
from adaptix.plugins import AdaptixPluginManager, get_plugin_manager


def build_untrained(
    spec: ModelConfig, num_classes: int, seed: int, manager: AdaptixPluginManager
) -> MultiExitModel:
    """The untrained model of ``spec`` (initial weights seeded by ``seed``)."""
    torch.manual_seed(seed)
    return build_model(
        spec.backbone,
        num_classes,
        head=spec.head,
        backbone_params=spec.backbone_params,
        head_params=spec.head_params,
        plugins=manager,
    )


def training_threads(config: JobConfig) -> int | None:
    """The torch threads a model trains on: one with worker processes (each worker has one
    core, in this process too, so that a model trains the same wherever it trains), else the
    job's ``threads`` (None: torch's default). Floating-point sums depend on it, so it is part
    of the cache key."""
    return 1 if config.train.workers > 1 else config.threads


def model_cache_key(spec: ModelConfig, config: JobConfig, source: DataSource) -> str:
    """Everything that decides a model's trained weights (not how many trained at once): the
    data's checksum too, so that other files behind the same path never reuse a model."""
    data = config.data.model_dump(mode="json", exclude={"test_size"})
    return cache_key(
        model=spec.model_dump(mode="json"),
        train=config.train.model_dump(mode="json", exclude={"workers"}),
        data=data,
        data_sha256=source.sha256,
        threads=training_threads(config) or torch.get_num_threads(),
        torch=torch.__version__.split("+")[0],
        cache_format=1,
    )


def _train(
    model: MultiExitModel,
    config: JobConfig,
    data: JobData,
    progress: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> float:
    """Train ``model`` on the training split with the configured recipe; the seconds it took."""
    recipe = config.train
    start = time.perf_counter()
    train_exits(
        model,
        data.train.pair(),
        None,
        mode=recipe.mode,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        schedule=recipe.schedule,
        label_smoothing=recipe.label_smoothing,
        augment=RandomCropFlip(recipe.crop_pad, recipe.flip) if recipe.augment else None,
        loss_weights=recipe.loss_weights,
        distillation=recipe.distillation,
        temperature=recipe.temperature,
        seed=recipe.seed,
        progress=progress,
        on_epoch=on_epoch,
    )
    return time.perf_counter() - start


def _train_in_worker(spec: ModelConfig, config: JobConfig) -> float:
    """A worker process's task: train one model on one thread, save it in the cache; the
    seconds training took. The worker loads the data and builds the plugins itself."""
    torch.set_num_threads(1)
    if config.tune_cpu_allocator:
        tune_cpu_allocator()
    manager = get_plugin_manager()
    data = load_job_data(config.data)
    model = build_untrained(spec, data.num_classes, config.train.seed, manager)
    start = time.perf_counter()

    def report(record: dict[str, Any]) -> None:
        # One line per epoch: bars of two processes would overwrite each other.
        print(
            f"{spec.name}: epoch {record['epoch'] + 1}/{config.train.epochs}, loss "
            f"{record['loss']:.3f}, {time.perf_counter() - start:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    seconds = _train(model, config, data, progress=False, on_epoch=report)
    ModelCache(config.resolved_cache_dir()).save(
        spec.name,
        model_cache_key(spec, config, data.source),
        model.state_dict(),
        {"seconds": seconds},
    )
    return seconds


def train_missing(
    config: JobConfig, source: DataSource, cache: ModelCache, log: Callable[[str], None]
) -> dict[str, float]:
    """With ``train.workers`` > 1, train the models missing from the cache in that many
    processes at once (each on one thread), largest first, and cache them; the seconds each
    took. With one worker, or one model to train, nothing happens here: `train_or_load`
    trains in this process."""
    if config.train.workers < 2:
        return {}
    # Existence only: reading and verifying every entry here would double the cached job's
    # loading. An entry that turns out corrupt is retrained in this process by train_or_load.
    missing = [
        spec
        for spec in config.models
        if not cache.path(spec.name, model_cache_key(spec, config, source)).is_file()
    ]
    workers = min(config.train.workers, len(missing))
    if workers < 2:
        return {}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # The family is listed smallest first: the largest starts first, so that the others fill
    # the remaining workers around it.
    order = list(reversed(missing))
    log(
        f"training {', '.join(s.name for s in order)} in {workers} processes "
        f"({config.train.epochs} epochs, {config.train.mode})"
    )
    seconds: dict[str, float] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(_train_in_worker, spec, config): spec.name for spec in order}
        # The workers print a line per epoch (the progress); a bar here would break them up.
        for future in as_completed(futures):
            name = futures[future]
            seconds[name] = future.result()
            log(f"{name}: trained in {seconds[name]:.0f} s")
    return seconds


def train_or_load(
    spec: ModelConfig,
    config: JobConfig,
    data: JobData,
    cache: ModelCache,
    manager: AdaptixPluginManager,
    log: Callable[[str], None],
    trained_here: dict[str, float],
) -> tuple[MultiExitModel, float | None, bool]:
    """The trained model of ``spec``, its training seconds and whether it came from an earlier
    run's cache (models that worker processes trained in this run, ``trained_here``, count as
    trained)."""
    model = build_untrained(spec, data.num_classes, config.train.seed, manager)
    key = model_cache_key(spec, config, data.source)
    cached = cache.load(spec.name, key)
    if cached is not None:
        state, info = cached
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            log(f"cache entry for {spec.name} does not fit the model ({err}); retraining")
        else:
            if spec.name in trained_here:
                return model.eval(), trained_here[spec.name], False
            log(f"{spec.name}: loaded from cache {cache.path(spec.name, key)}")
            return model.eval(), info.get("seconds"), True
    log(f"{spec.name}: training ({config.train.epochs} epochs, {config.train.mode})")
    threads = torch.get_num_threads()
    torch.set_num_threads(training_threads(config) or threads)
    try:
        seconds = _train(model, config, data, progress=True)
    finally:
        torch.set_num_threads(threads)
    cache.save(spec.name, key, model.state_dict(), {"seconds": seconds})
    return model.eval(), seconds, False
