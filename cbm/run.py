"""``cbm run``: the Hydra entry point of the whole method (configs in ``conf/``).

    cbm run                                          # confounded demo world, demo-clip, faithful head
    cbm run dataset=demo3                            # the 3-class demo world
    cbm run head=sparse                              # the unconstrained sparse head
    cbm run dataset=ham10000 encoder=biomedclip      # a built-in card (images + weights needed)
    cbm run -m head.l1_ratio=0.9,0.99 dataset=demo,demo3    # a sweep (multirun)
    cbm run -m hydra/launcher=slurm dataset=isic-sex,isic-age   # the same sweep on SLURM
    cbm run --cfg job                                # print the composed config
    cbm run hydra.run.dir=runs/exp1                  # choose the run folder

Only wiring lives here: compose the config, instantiate its nodes (``_target_`` on encoder,
bottleneck, head and the dataset's extra metrics), hand them to
:func:`cbm.pipeline.run_experiment`, print the table. Returns the figure ``optimized_metric``
names (``method.figure``, or ``auto``: val worst-group accuracy where the card has groups, else val
accuracy), which must be a validation figure: a sweeper optimises what the validation split says,
never test.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from cbm.errors import error_text
from cbm.resources import resource_dir
from cbm.selection import AUTO_METRIC, VALIDATION_FIGURES, check_optimized_metric, selection_figure  # noqa: F401 - cbm.run's API

__all__ = ["hydra_main", "register", "AUTO_METRIC", "CONFIG_DIR", "check_optimized_metric", "resolve_dataset", "sweep_value"]

_STATED: list[str] = []  # the error a run has stated itself (hydra_main then adds no hint about the command line)
_OPEN_SWEEPS: list[Path] = []  # sweeps begun and not yet ended: hydra_main marks those left as stopped
CONFIG_DIR = resource_dir("conf")  # the checkout's conf/, or the wheel's copy (cbm.resources)
log = logging.getLogger("cbm.run")


def resolve_dataset(dataset: dict[str, Any]):
    """The card of a ``dataset`` config node: ``card`` (a name or path), else the demo world drawn
    (once, then cached) with the ``demo`` settings."""
    from cbm.data import load_card

    if dataset.get("card") == "???":  # OmegaConf's mark of a value that must be given (conf/dataset/custom.yaml)
        raise ValueError("no card given: set dataset.card to a card.yaml, its folder or a card name, e.g. "
                         "cbm run dataset=custom dataset.card=my-derm/card.yaml")
    if dataset.get("card"):
        return load_card(dataset["card"])
    if dataset.get("demo"):
        from cbm.demo import cached_dataset

        settings = ("n", "confounding", "classes", "seed", "size", "workers")
        unknown = [k for k in dataset["demo"] if k not in settings]
        if unknown:
            close = {k: difflib.get_close_matches(k, settings, n=1) for k in unknown}
            raise ValueError("dataset.demo has no setting " + ", ".join(
                f"{k!r}" + (f" (did you mean {close[k][0]!r}?)" if close[k] else "") for k in unknown)
                + f"; its settings are {', '.join(settings)}")
        try:
            return load_card(cached_dataset(**dataset["demo"]))
        except ValueError as exc:  # a setting out of range: named by its config path
            raise ValueError(f"dataset.demo: {exc}") from exc
    raise ValueError("no dataset given: set dataset.card to a card name/path, or dataset.demo to demo settings")


def sweep_value(metrics: dict[str, dict[str, Any]], optimized_metric: str) -> float:
    """The figure ``method.figure`` of ``metrics`` that a sweep optimises; it must be a validation
    figure (``auto``: :data:`cbm.selection.AUTO_METRIC`)."""
    check_optimized_metric(optimized_metric)
    name, value = selection_figure(metrics, optimized_metric)
    if optimized_metric == AUTO_METRIC:
        log.info("optimized_metric auto: %s", name)  # a sweep over cards may mix the two
    method, _, figure = name.partition(".")
    if method not in metrics or figure not in metrics[method]:
        known = sorted(f"{m}.{k}" for m, r in metrics.items() for k in r if k.startswith("val_"))
        raise ValueError(f"optimized_metric={name!r} is not in this run's figures; these are: {', '.join(known)}")
    if value is None:  # e.g. worst-group accuracy on a card without groups
        raise ValueError(f"optimized_metric={name!r} was not measured in this run (no groups in val?)")
    return value


class SweepSummary:
    """A Hydra callback (``hydra.callbacks.summary`` in ``conf/config.yaml``): after each job of a
    sweep, ``summary.md`` and ``summary.json`` in the sweep's folder list every job so far side by
    side (:mod:`cbm.pipeline.compare`; ``cbm compare multirun/<time>`` prints the same), the run
    each dataset's sweep would choose by ``optimized_metric`` marked; once more when the sweep
    ends. Written after a failed job too, which Hydra's launcher reports only once the sweep ends;
    a single run writes none. It also keeps the sweep's records (:mod:`cbm.pipeline.sweep_record`:
    which jobs are this sweep's, which still run). Hydra's other events are no-ops here (this
    module does not import Hydra to subclass its ``Callback``)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    @staticmethod
    def _sweep(config: Any) -> Path:
        sweep = Path(str(config.hydra.sweep.dir))
        if not sweep.is_absolute():  # with hydra.job.chdir=true the job's folder is the working directory now
            sweep = Path(str(config.hydra.runtime.cwd or os.getcwd())) / sweep
        return sweep

    @staticmethod
    def _multirun() -> bool:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from cbm.pipeline.sweep_record import planned_jobs, start_sweep

        try:
            start_sweep(self._sweep(config), planned_jobs(config))
            _OPEN_SWEEPS.append(self._sweep(config))
        except OSError as exc:  # the records must not stop the sweep
            log.warning("sweep record not written: %s", exc)

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        from cbm.pipeline.sweep_record import start_job

        if self._multirun():
            try:
                start_job(Path(str(config.hydra.runtime.output_dir)), self._sweep(config))
            except OSError as exc:
                log.warning("job record not written: %s", exc)

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from cbm.pipeline.sweep_record import end_job, end_sweep_if_complete

        if not self._multirun():
            return
        failed = job_return is not None and job_return.status == JobStatus.FAILED
        try:
            end_job(Path(str(config.hydra.runtime.output_dir)), job_return._return_value if failed else None)
            end_sweep_if_complete(self._sweep(config))
        except OSError as exc:
            log.warning("job record not written: %s", exc)
        self._summarise(self._sweep(config))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from cbm.pipeline.sweep_record import end_sweep

        sweep = self._sweep(config)
        with contextlib.suppress(ValueError):
            _OPEN_SWEEPS.remove(sweep)
        try:
            end_sweep(sweep)
        except OSError as exc:
            log.warning("sweep record not written: %s", exc)
        self._summarise(sweep)  # again: with parallel jobs, the last to write may not have seen them all

    @staticmethod
    def _summarise(sweep: Path) -> None:
        from cbm.pipeline.compare import compare_runs, comparison_table, sweep_notes
        from cbm.utils import atomic_write_json, atomic_write_text

        try:
            rows = compare_runs([sweep])  # each job by the optimized_metric it was run with
            atomic_write_json(sweep / "summary.json", rows)
            atomic_write_text(sweep / "summary.md", f"# Sweep: {sweep.name}\n\n"
                              + comparison_table(rows, root=sweep, notes=sweep_notes([sweep])))
        except (OSError, ValueError) as exc:  # the summary must not fail the sweep
            log.warning("sweep summary not written: %s", exc)


class JobFailed(RuntimeError):
    """A sweep's job that stopped on a user-facing error (its message is the error's): raised for the
    launcher to count the job as failed, without the frames that led to the error."""


def _task(cfg) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from cbm.pipeline.run_folder import set_aside_earlier_results

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        set_aside_earlier_results(out_dir)  # before any check: Hydra has written this run's config there
        metrics = _run(cfg, out_dir)
        value = sweep_value(metrics, str(cfg.optimized_metric))
    except (ValueError, OSError, RuntimeError) as exc:
        # a single run states a user-facing error plainly (HYDRA_FULL_ERROR=1 keeps the traceback);
        # in a sweep the error stays an exception, so the launcher goes on with the other jobs
        log.error("%s", error_text(exc))
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if hydra_cfg.mode == RunMode.MULTIRUN:  # the error alone, not the chain of frames that reached it
            raise JobFailed(error_text(exc)) from None
        print(f"cbm run: error: {error_text(exc)}", file=sys.stderr)
        _STATED.append(str(exc))  # the command line was fine: no hints about its settings
        raise SystemExit(2) from None
    print((out_dir / "results.md").read_text(encoding="utf-8"))
    print(f"run folder: {out_dir}")
    return value


def _run(cfg, out_dir: Path) -> dict:
    from cbm.pipeline import run_experiment
    from cbm.pipeline.experiment import check_run_inputs
    from cbm.pipeline.inputs import check_splits_present

    dataset = _plain(cfg.dataset)
    if isinstance(dataset.get("card"), str) and dataset["card"] != "???":
        dataset["card"] = _from_launch_dir(dataset["card"], must_exist=True)  # else a card name
    card = resolve_dataset(dataset)
    # what can be checked without the encoder is checked before it loads (it can take minutes)
    check_splits_present(card)
    kwargs = experiment_arguments(cfg)
    if kwargs["features"].get("cache_dir"):
        kwargs["features"]["cache_dir"] = _from_launch_dir(str(kwargs["features"]["cache_dir"]))
    check_optimized_metric(str(cfg.optimized_metric), run_methods(kwargs["head"], kwargs["baselines"]), card)
    check_run_inputs(card, **{k: kwargs[k] for k in ("head", "concepts", "templates", "llm", "baselines", "n_bootstrap",
                                                     "bottleneck")})
    extra = {name: _instantiate(node, f"dataset.extra_metrics.{name}")
             for name, node in (_plain(cfg.dataset).get("extra_metrics") or {}).items()}
    return run_experiment(out_dir=out_dir, card=card, encoder=_instantiate(_plain(cfg.encoder), "encoder"), extra_metrics=extra,
                          **kwargs)


def _from_launch_dir(path: str, must_exist: bool = False) -> str:
    """A relative path of the config as the folder ``cbm run`` was started in reads it: with
    ``hydra.job.chdir=true`` the working directory is the run folder, where a card given as
    ``my-derm/card.yaml`` was "not found" and a relative cache was made anew in each run."""
    from hydra.core.hydra_config import HydraConfig

    launched = Path(str(HydraConfig.get().runtime.cwd))
    if os.path.isabs(path) or Path.cwd().resolve() == launched.resolve():
        return path
    return str(launched / path) if not must_exist or (launched / path).exists() else path


def _plain(node) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True)


def _instantiate(node, key: str) -> Any:
    """The object a config node describes; a bad value (a ValueError the object's own checks raise,
    or a setting it does not take: Hydra wraps both) is a ValueError naming the node, so it is
    reported as bad input."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:  # plain dicts and lists, as the object would get from Python (a head checks class_weight is a dict)
        return instantiate(node, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        binding = isinstance(cause, TypeError) and any(  # a setting the object does not take, or lacks
            words in str(cause) for words in ("unexpected keyword argument", "required positional argument",
                                              "required keyword-only argument"))
        if isinstance(cause, ValueError) or binding:  # a programming error's TypeError keeps its traceback
            raise ValueError(f"{key}: {cause}") from exc
        if isinstance(cause, (OSError, RuntimeError)):  # what this machine lacks (device=cuda without CUDA, weights)
            raise RuntimeError(f"{key}: {cause}") from exc
        if str(exc).startswith("Error locating target") and isinstance(node, dict):  # not an ImportError inside it
            why = "; ".join(str(cause).strip().splitlines()[1:]) if cause is not None else ""  # after "Error loading ..."
            raise ValueError(f"{key}._target_={node.get('_target_')!r} cannot be imported" + (f" ({why})" if why else "")
                             + ": give the dotted path of a function or class, and install what its module imports") from exc
        raise


def _flag(value: Any, name: str) -> bool:
    """A switch of the config: true or false only (``off``, ``no`` or ``0`` would read as on, or be guessed)."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"{name}={value!r}: write true or false")


def _whole(value: Any, name: str, least: int) -> int:
    """A whole-number setting of the config, at least ``least`` (``2.5`` or ``abc`` is refused, not cut to 2)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r}: write a whole number (at least {least})")
    if value < least:
        raise ValueError(f"{name}={value}: must be at least {least}")
    return value


def _features(node: dict[str, Any] | None) -> dict[str, Any]:
    """The ``features`` node, checked before the encoder loads (a batch size of 0 or a negative worker
    count was refused only once the encoder had loaded, or by PyTorch with no setting named)."""
    features = dict(node or {})
    if "batch_size" in features:
        features["batch_size"] = _whole(features["batch_size"], "features.batch_size", 1)
    if features.get("num_workers") is not None:  # null: the machine's default
        features["num_workers"] = _whole(features["num_workers"], "features.num_workers", 0)
    return features


def _concept_list(node: Any) -> Any:
    """``concepts.list``: null, one list of phrases for every class, or ``{class: [phrases]}``."""
    from omegaconf import OmegaConf

    if node is None:
        return None
    if not OmegaConf.is_config(node):  # a bare word or number (concepts.list=ruler) was OmegaConf's "not a config object"
        raise ValueError(f"concepts.list={node!r}: give a list of phrases for every class, "
                         "'concepts.list=[irregular border,regular border]', or {class: [phrases]}")
    return _plain(node)


def experiment_arguments(cfg) -> dict[str, Any]:
    """The arguments of :func:`cbm.pipeline.run_experiment` that a composed config gives, checked (all
    but the card, the encoder, the run folder and ``extra_metrics``); the head's settings checked too."""
    from cbm.pipeline.experiment import check_baselines

    head = _instantiate(_plain(cfg.head), "head")
    try:
        getattr(head, "check_params", lambda: None)()
    except ValueError as exc:
        raise ValueError(f"head: {exc}") from exc
    baselines = {k: _flag(v, f"baselines.{k}") for k, v in (_plain(cfg.baselines) or {}).items()}
    check_baselines(baselines)
    n_bootstrap = cfg.evaluation.n_bootstrap
    if isinstance(n_bootstrap, int) and not isinstance(n_bootstrap, bool) and n_bootstrap < 0:
        raise ValueError(f"evaluation.n_bootstrap={n_bootstrap}: give 0 (no intervals) or more resamples")
    n_bootstrap = _whole(n_bootstrap, "evaluation.n_bootstrap", 0)
    return dict(
        head=head,
        bottleneck=_instantiate(_plain(cfg.bottleneck), "bottleneck"),
        llm=_plain(cfg.llm),
        templates=cfg.concepts.templates,
        concepts=_concept_list(cfg.concepts.get("list")),
        check_store=_flag(cfg.concepts.get("check_with_truth", True), "concepts.check_with_truth"),
        baselines=baselines,
        features=_features(_plain(cfg.features)),
        n_bootstrap=n_bootstrap,
        seed=_whole(cfg.seed, "seed", 0),
        save_model=_flag(cfg.save_model, "save_model"),
    )


def run_methods(head: Any, baselines: dict[str, bool]) -> list[str]:
    """The methods a run with this head and these baseline switches measures."""
    from cbm.pipeline.experiment import METHODS, check_baselines

    on = check_baselines(baselines)
    return [m for m in METHODS if m == "cbm" or (on[m] and (m != "cbm_unconstrained" or getattr(head, "constraint", None)))]


def hydra_main(argv: list[str]) -> int:
    """Run the Hydra app with ``argv`` as its command line (overrides, ``-m``, ``--cfg job``, ...)."""
    import hydra

    if not (CONFIG_DIR / "config.yaml").is_file():
        print(f"cbm run: the Hydra configs are missing ({CONFIG_DIR}/config.yaml); "
              "run from a source checkout or an editable install (`make setup`).", file=sys.stderr)
        return 2
    app = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(_task)
    _STATED.clear()
    saved = sys.argv
    sys.argv = ["cbm run", *argv]
    _OPEN_SWEEPS.clear()
    stopped = "it ended early"
    try:
        app()
    except SystemExit as exc:  # Hydra exits on --help / bad overrides; _task on a bad input it has stated
        # Hydra has printed the error: the failed job's row (its run.log) says which
        stopped = "an error ended it: see the failed job, and cbm run's output"
        if exc.code and not _STATED:
            for hint in _unknown_key_hints(argv):
                print(f"cbm run: {hint}", file=sys.stderr)
        return int(exc.code or 0)
    except KeyboardInterrupt:
        stopped = "interrupted"
        raise
    except Exception as exc:  # with HYDRA_FULL_ERROR=1 the error comes through as it is
        from cbm.pipeline.sweep_record import first_line

        stopped = "an error ended it: " + first_line(exc)[:200]
        raise
    finally:
        sys.argv = saved
        _stop_open_sweeps(stopped)
    return 0


def _stop_open_sweeps(reason: str) -> None:
    """Mark each sweep Hydra began and did not end as stopped: a sweeper that raises (Optuna's at a
    failed job) or an interrupt leaves its record unfinished, which would read "still running"."""
    from cbm.pipeline.sweep_record import stop_sweep

    while _OPEN_SWEEPS:
        sweep = _OPEN_SWEEPS.pop()
        try:
            stop_sweep(sweep, reason)
        except OSError as exc:
            log.warning("sweep record not written: %s", exc)
        SweepSummary._summarise(sweep)


def _unknown_key_hints(argv: list[str]) -> list[str]:
    """After Hydra refused a command line: each override of a setting the composed config lacks (a
    misspelt ``head.l1_ratoi=0.9``), with the closest setting beside it. Nothing when the config
    itself cannot be composed (Hydra's own message says why)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    pairs = [a.split("=", 1) for a in argv if "=" in a and not a.startswith(("+", "~", "-", "hydra"))]
    # a group swept over (dataset=demo,demo3) is composed with its first choice
    groups, keys = [f"{k}={v.split(',')[0]}" for k, v in pairs if "." not in k], [k for k, _ in pairs if "." in k]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=groups)
    except Exception:  # noqa: BLE001 - a hint only: Hydra has already said what is wrong
        return []
    finally:
        GlobalHydra.instance().clear()
    hints = []
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None)
        # a setting with no value yet (dataset.card: ??? in dataset=custom) is a setting: select() gives the default for it
        if not OmegaConf.is_dict(node) or leaf in [str(k) for k in node.keys()]:
            continue
        close = difflib.get_close_matches(leaf, [str(k) for k in node], n=1)
        hints.append(f"{key} is not a setting" + (f": did you mean {parent}.{close[0]}?" if close else
                                                  f"; {parent} has {', '.join(str(k) for k in node if not str(k).startswith('_'))}"))
    return hints


def register(subparsers) -> None:
    """Show `run` in `cbm --help` (the real parsing is Hydra's: see :func:`hydra_main`)."""
    p = subparsers.add_parser(
        "run",
        help="run the whole method (Hydra app; `cbm run --help` for its options)",
        description=__doc__,
        add_help=False,
    )
    p.set_defaults(func=lambda args: hydra_main(["--help"]))
