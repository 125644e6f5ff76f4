"""``cbm run``: the Hydra entry point of the whole method (configs in ``conf/``).

    cbm run                                          # confounded demo world, demo-clip, sparse head
    cbm run dataset=demo3                            # the 3-class demo world
    cbm run dataset=ham10000 encoder=biomedclip      # a built-in card (images + weights needed)
    cbm run -m head.l1_ratio=0.9,0.99 dataset=demo,demo3    # a sweep (multirun)
    cbm run -m hydra/launcher=slurm dataset=isic-sex,isic-age   # the same sweep on SLURM
    cbm run --cfg job                                # print the composed config
    cbm run hydra.run.dir=runs/exp1                  # choose the run folder

Only wiring lives here: compose the config, instantiate the head, hand plain Python to
:func:`cbm.experiment.run_experiment`, print the table. Returns the CBM's out-of-domain (else
in-domain) accuracy, so a Hydra sweeper can optimise it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["hydra_main", "register", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
log = logging.getLogger("cbm.run")


def _task(cfg) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        metrics = _run(cfg, out_dir, instantiate(OmegaConf.to_container(cfg.head, resolve=True)))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # a single run states a user-facing error plainly (HYDRA_FULL_ERROR=1 keeps the traceback);
        # in a sweep the error stays an exception, so the launcher goes on with the other jobs
        log.error("%s", exc)
        if hydra_cfg.mode == RunMode.MULTIRUN or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"cbm run: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print((out_dir / "results.md").read_text(encoding="utf-8"))
    print(f"run folder: {out_dir}")
    cbm = metrics["cbm"]
    return float(cbm["ood_accuracy"] if cbm["ood_accuracy"] is not None else cbm["id_accuracy"])


def _run(cfg, out_dir: Path, head) -> dict:
    from omegaconf import OmegaConf

    from cbm.experiment import run_experiment

    return run_experiment(
        out_dir=out_dir,
        dataset=OmegaConf.to_container(cfg.dataset, resolve=True),
        encoder=OmegaConf.to_container(cfg.encoder, resolve=True),
        head=head,
        llm=OmegaConf.to_container(cfg.llm, resolve=True),
        templates=cfg.concepts.templates,
        concepts=OmegaConf.to_container(cfg.concepts.list, resolve=True) if cfg.concepts.get("list") is not None else None,
        baselines=OmegaConf.to_container(cfg.baselines, resolve=True),
        features=OmegaConf.to_container(cfg.features, resolve=True),
        n_bootstrap=int(cfg.evaluation.n_bootstrap),
        seed=int(cfg.seed),
        device=cfg.device,
        save_model=bool(cfg.save_model),
        bottleneck=OmegaConf.to_container(cfg.bottleneck, resolve=True) if cfg.get("bottleneck") is not None else None,
    )


def hydra_main(argv: list[str]) -> int:
    """Run the Hydra app with ``argv`` as its command line (overrides, ``-m``, ``--cfg job``, ...)."""
    import hydra

    if not (CONFIG_DIR / "config.yaml").is_file():
        print(f"cbm run: the Hydra configs are missing ({CONFIG_DIR}/config.yaml); "
              "run from a source checkout or an editable install (`make setup`).", file=sys.stderr)
        return 2
    app = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(_task)
    saved = sys.argv
    sys.argv = ["cbm run", *argv]
    try:
        app()
    except SystemExit as exc:  # Hydra exits on --help / bad overrides
        return int(exc.code or 0)
    finally:
        sys.argv = saved
    return 0


def register(subparsers) -> None:
    """Show `run` in `cbm --help` (the real parsing is Hydra's: see :func:`hydra_main`)."""
    p = subparsers.add_parser(
        "run",
        help="run the whole method (Hydra app; `cbm run --help` for its options)",
        description=__doc__,
        add_help=False,
    )
    p.set_defaults(func=lambda args: hydra_main(["--help"]))
