"""The contract checks: what every registered component must do, as plain functions.

Each check raises `AssertionError` naming the component and what broke. The checks use a helper
that raises rather than ``assert`` statements, which ``python -O`` strips and pytest does not
rewrite outside test modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from adaptix.components import (
    Backbone,
    BackboneParts,
    DecoderParts,
    ExitCriterion,
    ExitHead,
    ParamsModel,
    build_params,
)
from adaptix.core.calibration import Calibration
from adaptix.core.trace import Trace
from adaptix.errors import AdaptixError, CalibrationError, ValidationError
from adaptix.offline.calibrate import calibrate
from adaptix.offline.policy import ExitPolicy, policy
from adaptix.offline.simulate import simulate
from adaptix.offline.statistics import default_grid, threshold_grid
from adaptix.plugins import COMPONENT_KINDS, AdaptixPluginManager, Entry, resolve_manager
from adaptix.scalars import count
from adaptix.testing.data import synthetic_trace

#: A parameter name no component accepts: building with it must fail.
UNKNOWN_PARAM = "adaptix_contract_unknown_param"

#: Registry kinds, in the order `contract_cases` lists them (`adaptix.plugins.COMPONENT_KINDS`).
KINDS = tuple(kind.name for kind in COMPONENT_KINDS)

# Small enough to run in well under a second per component, large enough to fill most bins.
_INPUTS = 64
_EXITS = 4
_CLASSES = 5
_CALIBRATION_INPUTS = 512
_SINGLE_ROWS = 16


def _require(condition: bool, message: str) -> None:
    """Raise `AssertionError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise AssertionError(message)


def _raises(expected: type[BaseException], action: Callable[[], object], message: str) -> None:
    """Require ``action()`` to raise ``expected``; any other outcome fails with ``message``."""
    try:
        action()
    except expected:
        return
    except Exception as err:
        raise AssertionError(f"{message}; it raised {type(err).__name__}: {err}") from err
    raise AssertionError(f"{message}; it raised nothing")


def _require_same(actual: Tensor, expected: Tensor, message: str) -> None:
    """Require equal shapes and values (compared in float64, NaN equal to NaN)."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{message} (shape {list(actual.shape)} != {list(expected.shape)})")
    x, y = actual.double(), expected.double()
    differ = ~((x == y) | (x.isnan() & y.isnan()))
    if bool(differ.any()):
        index = tuple(differ.nonzero()[0].tolist())
        raise AssertionError(
            f"{message} (at {list(index)}: {x[index].item()!r} != {y[index].item()!r})"
        )


# ------------------------------------------------------------------------------ metadata


def _check_metadata(entry: Entry[Any], owner: str) -> None:
    component = entry.component
    name = getattr(component, "name", None)
    _require(
        isinstance(name, str) and bool(name) and name == entry.name,
        f"{owner}: class attribute `name` must be the non-empty registry name {entry.name!r}, "
        f"got {name!r}",
    )
    description = getattr(component, "description", None)
    _require(
        isinstance(description, str) and bool(description.strip()),
        f"{owner}: class attribute `description` must be a non-empty str (one line for "
        f"`adaptix plugins`), got {description!r}",
    )
    params_model = getattr(component, "Params", None)
    if not (isinstance(params_model, type) and issubclass(params_model, ParamsModel)):
        raise AssertionError(
            f"{owner}: `Params` must subclass adaptix.components.ParamsModel, got {params_model!r}"
        )
    extra = params_model.model_config.get("extra")
    _require(
        extra == "forbid",
        f"{owner}: `Params` must reject unknown keys (model_config extra='forbid'), got "
        f"extra={extra!r}",
    )


def _build(entry: Entry[Any], params: Mapping[str, Any], owner: str) -> Any:
    """Instantiate a calibrator, head or backbone the way adaptix does, after checking that an
    unknown parameter is refused."""
    _raises(
        ValidationError,
        lambda: build_params(entry.component.Params, {**params, UNKNOWN_PARAM: 1}, owner),
        f"{owner}: an unknown parameter {UNKNOWN_PARAM!r} must raise adaptix.ValidationError",
    )
    return entry.component(build_params(entry.component.Params, dict(params), owner))


# ------------------------------------------------------------------------------ criteria


def check_criterion(
    name: str,
    *,
    thresholds: Sequence[float] | None = None,
    calibration: Calibration | None = None,
    params: Mapping[str, Any] | None = None,
    plugins: AdaptixPluginManager | None = None,
) -> None:
    """Check the exit criterion registered as ``name`` against the criterion contract.

    Metadata, parameter and threshold validation, score shapes and dtypes, determinism,
    batch-of-one equality, monotonicity of thresholds, and agreement of the per-exit `score` /
    `select_state` path on a shrinking batch (what the runtime does) with `scores`.

    Args:
        name: the registry name.
        thresholds: thresholds to check monotonicity over (default: the criterion's
            `default_thresholds`), a non-empty list (else `ValidationError`; an empty default
            grid is a `PluginError` naming the plugin).
        calibration: for criteria that read one; built from a synthetic labelled trace when
            omitted. Its number of exits and classes sets the synthetic traces' shape.
        params: the criterion's parameters.
        plugins: the plugin manager (default: the shared one).

    Raises:
        AssertionError: the criterion breaks the contract; the message says how.
    """
    manager = resolve_manager(plugins)
    entry = manager.criteria.entry(name)
    owner = f"criterion '{name}'"
    _check_metadata(entry, owner)
    component = entry.component
    _require(
        component.direction in ("ge", "le"),
        f"{owner}: `direction` must be 'ge' or 'le', got {component.direction!r}",
    )
    _require(
        isinstance(component.needs_calibration, bool),
        f"{owner}: `needs_calibration` must be a bool, got {component.needs_calibration!r}",
    )
    num_exits, num_classes = _EXITS, _CLASSES
    if calibration is not None:
        num_exits, num_classes = calibration.num_exits, calibration.num_classes
    elif component.needs_calibration:
        held_out = synthetic_trace(_CALIBRATION_INPUTS, num_exits, num_classes, seed=1)
        calibration = calibrate(held_out, plugins=manager)
    # The one grid check (`adaptix.offline.statistics`): a plugin's empty default grid is a
    # PluginError naming it, an empty or malformed ``thresholds`` a ValidationError.
    given = threshold_grid(thresholds, "thresholds")
    grid = default_grid(name, manager) if given is None else given
    kwargs = dict(params or {})
    base = policy(name, grid[0], calibration, plugins=manager, **kwargs)
    trace = synthetic_trace(_INPUTS, num_exits, num_classes, seed=0)

    _check_criterion_config(name, base, grid, calibration, kwargs, manager)
    full = _check_criterion_scores(base, trace.logits, owner)
    _check_compacted_batch(base.criterion, trace.logits, full, owner)
    _check_monotone(base, trace, grid, owner)


def _check_criterion_config(
    name: str,
    base: ExitPolicy,
    grid: list[float],
    calibration: Calibration | None,
    params: dict[str, Any],
    manager: AdaptixPluginManager,
) -> None:
    owner = f"criterion '{name}'"
    _raises(
        ValidationError,
        lambda: policy(name, grid[0], calibration, plugins=manager, **params, **{UNKNOWN_PARAM: 1}),
        f"{owner}: an unknown parameter {UNKNOWN_PARAM!r} must raise adaptix.ValidationError",
    )
    _raises(
        AdaptixError,
        lambda: base.with_threshold(math.nan),
        f"{owner}: a NaN threshold must raise adaptix.AdaptixError",
    )
    for threshold in base.criterion.default_thresholds():
        base.with_threshold(threshold)
    if base.criterion.needs_calibration:
        _raises(
            AdaptixError,
            lambda: policy(name, grid[0], None, plugins=manager, **params),
            f"{owner}: needs a calibration, so building it without one must raise "
            "adaptix.CalibrationError",
        )
    if calibration is not None:
        num_exits, num_classes = calibration.num_exits, calibration.num_classes
        _raises(
            AdaptixError,
            lambda: base.check_model(num_exits + 1, num_classes),
            f"{owner}: check_model must refuse a model with another number of exits than its "
            "calibration (call super().check_model)",
        )


def _check_criterion_scores(base: ExitPolicy, logits: Tensor, owner: str) -> Tensor:
    """Shapes, dtypes, purity, determinism and batch-of-one; returns ``scores(logits)``."""
    criterion = base.criterion
    n, num_exits, _ = logits.shape
    before = logits.clone()
    full = criterion.scores(logits)
    _require(
        isinstance(full, Tensor) and tuple(full.shape) == (n, num_exits),
        f"{owner}: scores(logits [{n}, {num_exits}, C]) must return a tensor of shape "
        f"[{n}, {num_exits}], got {getattr(full, 'shape', type(full).__name__)}",
    )
    _require(full.is_floating_point(), f"{owner}: scores must be floating point, got {full.dtype}")
    _require(torch.equal(logits, before), f"{owner}: scoring must not modify the logits")
    again = criterion.scores(logits)
    _require_same(again, full, f"{owner}: scores differ between two calls on the same logits")
    state = criterion.start(n, logits.device)
    for e in range(num_exits):
        value, state = criterion.score(logits[:, e], e, state)
        _require(
            isinstance(value, Tensor) and tuple(value.shape) == (n,),
            f"{owner}: score at exit {e} for {n} rows must return a tensor of shape [{n}], got "
            f"{getattr(value, 'shape', type(value).__name__)}",
        )
        _require(
            value.is_floating_point(),
            f"{owner}: score at exit {e} must be floating point, got {value.dtype}",
        )
        _require_same(
            value, full[:, e], f"{owner}: score at exit {e} disagrees with scores(...)[:, {e}]"
        )
    for row in range(min(n, _SINGLE_ROWS)):
        single = criterion.scores(logits[row : row + 1])
        _require_same(
            single,
            full[row : row + 1],
            f"{owner}: the scores of input {row} alone differ from its scores in the batch "
            "(rows must not interact)",
        )
    return full


def _check_compacted_batch(
    criterion: ExitCriterion, logits: Tensor, full: Tensor, owner: str
) -> None:
    """Score a batch that loses rows at every exit, as the runtime does, against ``full``."""
    n, num_exits, _ = logits.shape
    generator = torch.Generator().manual_seed(0)
    rows = torch.arange(n)
    state = criterion.start(n, logits.device)
    for e in range(num_exits):
        value, state = criterion.score(logits[rows, e], e, state)
        _require(
            isinstance(value, Tensor),
            f"{owner}: score at exit {e} returned {type(value).__name__}, not a tensor",
        )
        _require_same(
            value,
            full[rows, e],
            f"{owner}: after rows left the batch, score at exit {e} disagrees with scores(...) "
            "on the full batch: select_state must keep exactly the state of the kept rows",
        )
        remaining = rows.numel()
        keep = torch.randperm(remaining, generator=generator)[: max(1, remaining * 2 // 3)]
        keep = keep.sort().values
        rows = rows[keep]
        state = criterion.select_state(state, keep)


def _check_monotone(base: ExitPolicy, trace: Trace, grid: list[float], owner: str) -> None:
    """A stricter threshold (larger for "ge", smaller for "le") never makes inputs exit earlier."""
    ordered = sorted(grid, reverse=base.criterion.direction == "le")
    previous: tuple[float, Tensor] | None = None
    for threshold in ordered:
        exits = simulate(trace, base.with_threshold(threshold)).exit_index
        if previous is not None:
            loose, loose_exits = previous
            earlier = (exits < loose_exits).nonzero()
            if earlier.numel():
                row = int(earlier[0, 0])
                raise AssertionError(
                    f"{owner}: not monotone: input {row} exits at {int(exits[row])} with the "
                    f"stricter threshold {threshold!r} but at {int(loose_exits[row])} with "
                    f"{loose!r} (direction {base.criterion.direction!r})"
                )
        previous = (threshold, exits)


# ---------------------------------------------------------------------------- calibrators


def check_calibrator(
    name: str,
    *,
    bins: int = 10,
    params: Mapping[str, Any] | None = None,
    plugins: AdaptixPluginManager | None = None,
) -> None:
    """Check the calibrator registered as ``name`` against the calibrator contract.

    Metadata and parameter validation; on synthetic labelled traces: one count per input at
    every exit, determinism, merging by addition (the calibration of two shards summed equals
    the calibration of both), a single bin, and an error for unlabelled data. A calibrator
    whose bin edges depend on the data (its calibration is not `Calibration.equal_width`)
    must accept an ``edges`` parameter that counts with given edges instead: the shards are
    counted with the whole trace's edges, and counting the whole trace with them must give
    its calibration back.

    Args:
        name: the registry name.
        bins: the number of bins to calibrate with.
        params: the calibrator's parameters.
        plugins: the plugin manager (default: the shared one).

    Raises:
        AssertionError: the calibrator breaks the contract; the message says how.
        ValidationError: ``bins`` is not an integer >= 1.
    """
    bins = count(bins, "bins", low=1)
    manager = resolve_manager(plugins)
    entry = manager.calibrators.entry(name)
    owner = f"calibrator '{name}'"
    _check_metadata(entry, owner)
    _build(entry, params or {}, owner)
    kwargs = dict(params or {})

    def fit(trace: Trace, num_bins: int = bins, **fixed: Any) -> Calibration:
        return calibrate(trace, name, num_bins, plugins=manager, **kwargs, **fixed)

    trace = synthetic_trace(2 * _INPUTS, _EXITS, _CLASSES, seed=2)
    try:
        result = fit(trace)
    except CalibrationError as err:
        raise AssertionError(
            f"{owner}: calibrating a labelled trace must give a valid Calibration; it raised "
            f"CalibrationError: {err}"
        ) from err
    per_exit = result.counts.sum(dim=1)
    _require(
        bool((per_exit == trace.num_inputs).all()),
        f"{owner}: every input must be counted once at every exit: {trace.num_inputs} inputs, "
        f"counts per exit {per_exit.tolist()}",
    )
    _require(fit(trace) == result, f"{owner}: two fits of the same trace differ")
    half = trace.num_inputs // 2
    first, second = trace.subset(slice(0, half)), trace.subset(slice(half, None))
    # Edges fitted to the data differ between shards: shards merge when counted with the same.
    fixed: dict[str, Any] = {} if result.equal_width else {"edges": result.edges}
    if fixed:
        try:
            refit = fit(trace, **fixed)
        except ValidationError as err:
            raise AssertionError(
                f"{owner}: its bin edges depend on the data, so it must accept a parameter "
                f"'edges' ([E, M + 1]) to count with given edges, for shards to merge; it "
                f"raised ValidationError: {err}"
            ) from err
        _require(
            refit == result,
            f"{owner}: counting the trace with the edges fitted to it (parameter 'edges') must "
            "give the same calibration",
        )
    merged = fit(first, **fixed) + fit(second, **fixed)
    for table in ("counts", "correct"):
        _require(
            torch.equal(getattr(merged, table), getattr(result, table)),
            f"{owner}: '{table}' of the two halves' calibrations added up differs from the "
            "calibration of the whole trace: calibrations must merge by addition",
        )
    _require(
        torch.allclose(merged.confidence_sum, result.confidence_sum, rtol=1e-9, atol=1e-9),
        f"{owner}: 'confidence_sum' of the two halves added up differs from the whole's",
    )
    _require(fit(trace, 1).bins == 1, f"{owner}: must accept bins=1")
    unlabelled = synthetic_trace(_INPUTS, _EXITS, _CLASSES, seed=2, labelled=False)
    _raises(
        AdaptixError,
        lambda: fit(unlabelled),
        f"{owner}: calibrating an unlabelled trace must raise adaptix.CalibrationError",
    )


# ------------------------------------------------------------------------------ exit heads


def check_exit_head(
    name: str,
    *,
    params: Mapping[str, Any] | None = None,
    plugins: AdaptixPluginManager | None = None,
) -> None:
    """Check the exit head registered as ``name`` against the exit-head contract.

    Metadata and parameter validation; the built module maps ``[n, d]`` features to finite
    floating ``[n, C]`` logits, is deterministic in eval mode, treats rows independently, passes
    gradients to its input, and shares no parameters between two builds (every exit gets its
    own head).

    Args:
        name: the registry name.
        params: the head's parameters.
        plugins: the plugin manager (default: the shared one).

    Raises:
        AssertionError: the head breaks the contract; the message says how.
    """
    manager = resolve_manager(plugins)
    entry = manager.exit_heads.entry(name)
    owner = f"exit head '{name}'"
    _check_metadata(entry, owner)
    head: ExitHead = _build(entry, params or {}, owner)
    generator = torch.Generator().manual_seed(0)
    for in_features, num_classes in ((7, 5), (16, 2)):
        module = head.build(in_features, num_classes)
        _require(
            isinstance(module, nn.Module),
            f"{owner}: build must return an nn.Module, got {type(module).__name__}",
        )
        module.eval()
        features = torch.randn(4, in_features, generator=generator)
        with torch.no_grad():
            logits = module(features)
            again = module(features)
            rows = [module(features[i : i + 1]) for i in range(features.shape[0])]
        _require(
            isinstance(logits, Tensor) and tuple(logits.shape) == (4, num_classes),
            f"{owner}: build({in_features}, {num_classes}) on features [4, {in_features}] must "
            f"give logits [4, {num_classes}], got {getattr(logits, 'shape', type(logits))}",
        )
        _require(
            logits.is_floating_point() and bool(torch.isfinite(logits).all()),
            f"{owner}: logits must be finite floats, got {logits.dtype}",
        )
        _require(torch.equal(logits, again), f"{owner}: not deterministic in eval mode")
        _require(
            torch.allclose(torch.cat(rows), logits, rtol=1e-4, atol=1e-5),
            f"{owner}: the logits of a row alone differ from its logits in the batch",
        )
        module.train()
        grad_input = features.clone().requires_grad_(True)
        module(grad_input).sum().backward()
        _require(
            grad_input.grad is not None,
            f"{owner}: no gradient reaches the features: the head cannot be trained with "
            "the backbone",
        )
        other = head.build(in_features, num_classes)
        shared = {id(p) for p in module.parameters()} & {id(p) for p in other.parameters()}
        _require(
            not shared,
            f"{owner}: two builds share {len(shared)} parameter tensors; each exit needs its own",
        )


# ------------------------------------------------------------------------------- backbones


def check_backbone(
    name: str,
    *,
    source: Any = None,
    params: Mapping[str, Any] | None = None,
    plugins: AdaptixPluginManager | None = None,
) -> None:
    """Check the backbone registered as ``name`` against the backbone contract.

    Metadata and parameter validation, then ``build(source)``: `BackboneParts` with at least one
    block and, when declared, one feature size per block. A backbone that adapts a user's
    network may refuse to build without a ``source``; it must then raise an
    `adaptix.AdaptixError`, and only the metadata is checked. If an example input is available
    (``BackboneParts.example_input``, or an ``example_input()`` class method or method of the
    backbone), a forward pass through every block must give ``[n, d]`` features with ``d`` the
    declared feature size.

    Args:
        name: the registry name.
        source: what ``build`` adapts (None: a backbone that builds its own network).
        params: the backbone's parameters.
        plugins: the plugin manager (default: the shared one).

    Raises:
        AssertionError: the backbone breaks the contract; the message says how.
    """
    manager = resolve_manager(plugins)
    entry = manager.backbones.entry(name)
    owner = f"backbone '{name}'"
    _check_metadata(entry, owner)
    backbone: Backbone = _build(entry, params or {}, owner)
    try:
        parts = backbone.build(source)
    except AdaptixError:
        if source is None:
            return
        raise
    _require(
        isinstance(parts, BackboneParts),
        f"{owner}: build must return adaptix.components.BackboneParts, got {type(parts).__name__}",
    )
    num_blocks = len(parts.blocks)
    _require(num_blocks >= 1, f"{owner}: build returned no blocks")
    if isinstance(parts, DecoderParts):
        _check_decoder(parts, owner)
        return
    dims = parts.feature_dims
    if dims is not None:
        _require(
            len(dims) == num_blocks and all(d >= 1 for d in dims),
            f"{owner}: feature_dims must give one positive size per block: {num_blocks} blocks, "
            f"feature_dims {list(dims)}",
        )
    example = parts.example_input
    if example is None and hasattr(backbone, "example_input"):
        example = backbone.example_input()
    if example is None:
        return
    if parts.input_shape is not None and isinstance(example, Tensor):
        _require(
            tuple(example.shape[1:]) == tuple(parts.input_shape),
            f"{owner}: the example input's shape {list(example.shape)} does not match "
            f"input_shape {list(parts.input_shape)}",
        )
    _check_forward(parts, example, owner)


def _batch_size(value: Any) -> int | None:
    """The leading dimension of the first tensor in ``value`` (a tensor, mapping or sequence)."""
    if isinstance(value, Tensor):
        return int(value.shape[0])
    items: Iterator[Any] = iter(())
    if isinstance(value, Mapping):
        items = iter(value.values())
    elif isinstance(value, (list, tuple)):
        items = iter(value)
    for item in items:
        size = _batch_size(item)
        if size is not None:
            return size
    return None


def _check_forward(parts: BackboneParts, example: Any, owner: str) -> None:
    batch = _batch_size(example)
    parts.blocks.eval()
    if parts.feature is not None:
        parts.feature.eval()
    state = example
    with torch.no_grad():
        for e, block in enumerate(parts.blocks):
            state = block(state)
            features = state if parts.feature is None else parts.feature(state)
            _require(
                isinstance(features, Tensor) and features.dim() == 2,
                f"{owner}: the features after block {e} must be a [n, d] tensor, got "
                f"{getattr(features, 'shape', type(features).__name__)}",
            )
            _require(
                batch is None or features.shape[0] == batch,
                f"{owner}: the features after block {e} have {features.shape[0]} rows for an "
                f"example batch of {batch}",
            )
            if parts.feature_dims is not None:
                _require(
                    features.shape[1] == parts.feature_dims[e],
                    f"{owner}: the features after block {e} have size {features.shape[1]}, "
                    f"feature_dims says {parts.feature_dims[e]}",
                )


def _check_decoder(parts: DecoderParts, owner: str) -> None:
    """A decoder's parts run by adaptix: the anatomy, and greedy generation through the cache
    equal to the teacher-forced full forward pass on the same tokens."""
    from adaptix.online.decoder import DecoderModel, token_trace
    from adaptix.online.generate import EarlyExitGenerator

    try:
        model = DecoderModel(parts, [])
    except AdaptixError as err:
        raise AssertionError(f"{owner}: its DecoderParts cannot run: {err}") from err
    example = parts.example_input
    prompt = example.tolist() if isinstance(example, Tensor) else [[1, 2, 3]]
    out = EarlyExitGenerator(model, None).generate(prompt, max_new_tokens=4, eos_token_id=[])
    select = torch.zeros_like(out.attention_mask)
    select[:, out.prompt_length - 1 : out.prompt_length + 3] = True
    trace = token_trace(model, out.sequences, out.attention_mask, select=select)
    assert trace.labels is not None
    forced = trace.labels.view(len(prompt), 4).tolist()
    _require(
        forced == out.tokens,
        f"{owner}: greedy tokens through the KV cache {out.tokens} differ from the full forward "
        f"pass on the same tokens {forced}: its layers do not follow the Llama anatomy "
        "(adaptix.components.DecoderParts)",
    )


# ------------------------------------------------------------------------------ KV strategies


def check_kv_strategy(
    name: str,
    *,
    params: Mapping[str, Any] | None = None,
    plugins: AdaptixPluginManager | None = None,
) -> None:
    """Check the KV strategy registered as ``name`` against the KV-strategy contract.

    Metadata and parameters, then generation on a tiny decoder (`adaptix.testing.decoder`) with
    a policy that exits every token it can at the first exit: `fill` must return what
    `adaptix.components.KVStrategy.fill` promises (the generator refuses anything else), a
    strategy that claims ``exact`` must leave a cache whose every filled entry equals the full
    model's and whose missing entries are pending work only (a suffix of each row's tokens).

    Raises:
        AssertionError: the strategy breaks the contract; the message says how.
    """
    from adaptix.offline.policy import policy as make_policy
    from adaptix.online.decoder import DecoderModel
    from adaptix.online.generate import EarlyExitGenerator
    from adaptix.testing.decoder import tiny_decoder

    manager = resolve_manager(plugins)
    entry = manager.kv_strategies.entry(name)
    owner = f"KV strategy '{name}'"
    _check_metadata(entry, owner)
    if params:
        raise ValidationError(f"{owner}: KV strategies take no parameters here, got {params!r}.")
    component = entry.component
    for flag_name in ("exact", "defers"):
        _require(
            isinstance(getattr(component, flag_name, None), bool),
            f"{owner}: {flag_name} must be a bool, got {getattr(component, flag_name, None)!r}",
        )
    model = DecoderModel(tiny_decoder(), [0, 2])
    prompts = [[1, 5, 7, 9, 11], [3, 4], [8, 8, 8]]
    exit_first = make_policy("confidence", 0.0, plugins=manager)
    try:
        out = EarlyExitGenerator(model, exit_first, kv=name, plugins=manager).generate(
            prompts, max_new_tokens=6, eos_token_id=[], keep_cache=True
        )
    except AdaptixError as err:
        raise AssertionError(f"{owner}: generation failed: {err}") from err
    assert out.cache is not None
    if not component.exact:
        return
    reference, _ = model.prefill(out.sequences, out.attention_mask, out.sequences.shape[1])
    inputs = out.attention_mask.clone()
    inputs[:, -1] = False
    for layer in range(model.num_layers):
        filled = out.cache.filled[layer] & inputs
        for row in range(len(prompts)):
            missing = ~filled[row, inputs[row]]
            if bool(missing.any()):
                first = int(missing.nonzero()[0])
                _require(
                    bool(missing[first:].all()),
                    f"{owner} claims exact but leaves a hole at layer {layer} of row {row}: "
                    "an entry a later token read was never computed",
                )
        for table, want in ((out.cache.keys, reference.keys), (out.cache.values, reference.values)):
            got = table[layer].transpose(1, 2)[filled]
            expected = want[layer].transpose(1, 2)[filled]
            _require(
                torch.allclose(got, expected, rtol=1e-9, atol=1e-9),
                f"{owner} claims exact, but at layer {layer} its cache differs from the full "
                f"model's by {float((got - expected).abs().max()):.3g}",
            )


# ------------------------------------------------------------------------------ all of them


_CHECKS: dict[str, Callable[..., None]] = {
    "criterion": check_criterion,
    "calibrator": check_calibrator,
    "exit head": check_exit_head,
    "backbone": check_backbone,
    "kv strategy": check_kv_strategy,
}


def contract_cases(plugins: AdaptixPluginManager | None = None) -> list[tuple[str, str]]:
    """(kind, name) of every registered component, for ``pytest.mark.parametrize``.

    Kinds are ``"criterion"``, ``"calibrator"``, ``"exit head"``, ``"backbone"`` and
    ``"kv strategy"``.
    """
    manager = resolve_manager(plugins)
    return [(kind, name) for kind in KINDS for name in manager.registry(kind).names()]


def check_component(
    kind: str, name: str, *, plugins: AdaptixPluginManager | None = None, **options: Any
) -> None:
    """Run the contract check of ``kind`` on ``name`` (``options`` go to that check)."""
    if kind not in _CHECKS:
        raise ValidationError(f"expected a component kind in {list(KINDS)}, got {kind!r}.")
    _CHECKS[kind](name, plugins=plugins, **options)


__all__ = [
    "KINDS",
    "UNKNOWN_PARAM",
    "check_backbone",
    "check_calibrator",
    "check_component",
    "check_criterion",
    "check_exit_head",
    "check_kv_strategy",
    "contract_cases",
]
