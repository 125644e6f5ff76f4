"""`cbm run`: every config group composes, every experiment file runs on tiny settings, sweeps work,
and a run folder holds what the README promises (config, metrics.json, results.md, plot, model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from cbm.cli import main as cbm_main
from cbm.encoders.testing import write_tiny_config
from cbm.model import ConceptBottleneckModel
from cbm.pipeline.compare import compare_runs
from cbm.run import CONFIG_DIR

GROUPS = ("dataset", "encoder", "llm", "head", "experiment")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    """Overrides that make any run tiny: a 3.4M-parameter random CLIP and a 90-image demo world."""
    cfg = write_tiny_config(tmp_path_factory.mktemp("enc"))
    return [
        f"encoder.name={cfg}@random",
        "dataset.card=null",
        "++dataset.demo={n: 90, confounding: 0.9, classes: 2, seed: 1, size: 64}",
        "features.num_workers=0",
        "evaluation.n_bootstrap=20",
        "head.n_lambdas=8",
    ]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_group_option_composes(group):
    options = _options(group)
    assert options, f"conf/{group} is empty"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for option in options:
            cfg = compose("config", overrides=[f"{group}={option}"])
            assert cfg.dataset.name and cfg.encoder.name and cfg.head._target_ == "cbm.heads.SparseConceptHead"
            if group == "head":
                from hydra.utils import instantiate

                head = instantiate(cfg.head)
                assert head.get_params()["l1_ratio"] == cfg.head.l1_ratio


def test_slurm_launcher_preset_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1


def test_demo_abcd_is_the_3_class_world_with_the_whole_store():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=demo_abcd"])
    assert cfg.dataset.demo.classes == 3 and cfg.head.max_concepts_per_class == 8
    assert cfg.concepts.list is None  # the card's concept store, not a hand-picked list


def test_cfg_job_prints_the_config(capsys):
    assert cbm_main(["run", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "dataset:" in out and "name: demo-derm" in out and "_target_: cbm.heads.SparseConceptHead" in out


@pytest.mark.parametrize("experiment", [None, *_options("experiment")])
def test_every_experiment_runs_tiny(experiment, tiny, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = [] if experiment is None else [f"experiment={experiment}"]
    assert cbm_main(["run", *args, *tiny, f"hydra.run.dir={run_dir}"]) == 0
    assert "| cbm |" in capsys.readouterr().out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"cbm", "cbm_unconstrained", "linear_probe", "zero_shot", "dense_concepts"}
    for method, m in metrics.items():
        for key in ("id_accuracy", "ood_accuracy", "accuracy", "macro_f1"):
            assert key in m, (method, key)
        assert 0.0 <= m["accuracy"] <= 1.0
    assert metrics["cbm"]["ood_accuracy"] is not None  # the demo world is confounded
    assert metrics["cbm"]["concepts_per_class"] >= 0
    assert "| method | ID acc | OOD acc | gap | average |" in (run_dir / "results.md").read_text()
    assert (run_dir / "path.svg").read_text().startswith("<svg")
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    model = ConceptBottleneckModel.load(run_dir / "model")
    assert model.classes == ["benign nevus", "melanoma"]
    # the demo card annotates concept truth, but 45 training images are too few to judge the store by
    check = metrics["cbm"]["store_check"]
    assert model.info["store_check"] == check and not check["checked"]
    assert "is annotated on 100 training images" in check["reason"]
    assert f"Concept store not checked against concept truth: {check['reason']}." in (run_dir / "results.md").read_text()
    assert model.concepts_per_class() == pytest.approx(metrics["cbm"]["concepts_per_class"])
    if experiment in ("isic_confounded", "nih_confounded"):  # real cards' configs name no demo hook
        assert "abcd_rule" not in metrics["cbm"]
        return
    rule = metrics["cbm"]["abcd_rule"]  # the demo configs' hook: the ABCD weights are read off the head
    if experiment == "demo_abcd":
        # the whole concept store, at most 8 concepts per class
        assert {"asymmetric shape", "symmetric shape", "three or more colours"} <= set(model.bottleneck.concept_names)
        assert metrics["cbm"]["concepts_per_class"] <= 8
        assert rule["letters_found"] == 4 and "Spearman" in (run_dir / "results.md").read_text()
    assert set(rule["weights"]) == {"A", "B", "C", "D"}


def test_multirun_sweep(tiny, tmp_path):
    sweep = tmp_path / "sweep"
    assert cbm_main(["run", "-m", "head.l1_ratio=0.9,0.99", *tiny, f"hydra.sweep.dir={sweep}"]) == 0
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(runs) == 2
    ratios = {json.loads((r / "model" / "model.json").read_text())["info"]["head"]["l1_ratio"] for r in runs}
    assert ratios == {0.9, 0.99}
    # the sweep's summary: both jobs side by side, the one with the higher validation figure chosen
    rows = json.loads((sweep / "summary.json").read_text())
    assert [r["overrides"][0] for r in rows] == ["head.l1_ratio=0.9", "head.l1_ratio=0.99"]
    values = [r["selection"]["value"] for r in rows]
    assert all(r["selection"]["figure"] == "cbm.val_worst_group_accuracy" for r in rows)  # auto, on a card with groups
    for r in rows:
        metrics = json.loads((Path(r["run"]) / "metrics.json").read_text())
        assert r["selection"]["value"] == metrics["cbm"]["val_worst_group_accuracy"]
        assert r["cbm"]["ood_accuracy"] == metrics["cbm"]["ood_accuracy"]
    assert [r["chosen"] for r in rows] == [values[0] >= values[1], values[0] < values[1]]
    table = (sweep / "summary.md").read_text()
    assert "| 0" in table and "`head.l1_ratio=0.99`" in table and sum(line.startswith(("| 0 **(chosen", "| 1 **(chosen")) for line in table.splitlines()) == 1
    # the sweep's records: its jobs are known by their content, so a copy that loses file times (git, scp -r)
    # lists the same jobs, and the summary says the sweep finished
    assert json.loads((sweep / "cbm_sweep.json").read_text())["planned_jobs"] == 2
    assert "Sweep sweep: finished; 2 job(s)." in table
    assert {json.loads((r / "cbm_job.json").read_text())["status"] for r in runs} == {"done"}
    copy = shutil.copytree(sweep, tmp_path / "copy", copy_function=shutil.copy)  # file times not kept
    (copy / "multirun.yaml").touch()  # newer than every job's config, as a copy may leave it
    assert [r["overrides"] for r in compare_runs([copy])] == [r["overrides"] for r in rows]


def test_bad_override_is_an_error_not_a_crash(capsys):
    assert cbm_main(["run", "dataset=no-such-card"]) != 0
    assert "no-such-card" in capsys.readouterr().err
    # a misspelt experiment is refused like any group, not skipped for the default world
    assert cbm_main(["run", "experiment=demo_abcdd", "--cfg", "job"]) != 0
    assert "Could not find 'experiment/demo_abcdd'" in capsys.readouterr().err
    # a misspelt setting: Hydra refuses it, and cbm names the closest one, in the group chosen
    assert cbm_main(["run", "-m", "dataset=demo3,demo", "head=sparse", "dataset.demo.confunding=0.5", "head.l1_ratoi=0.9"]) != 0
    err = capsys.readouterr().err
    assert "did you mean dataset.demo.confounding?" in err and "did you mean head.l1_ratio?" in err
    assert cbm_main(["run", "head.zzz=1"]) != 0
    assert "head.zzz is not a setting; head has l1_ratio, " in capsys.readouterr().err


def test_a_relative_card_is_read_from_the_launch_folder_when_hydra_changes_folder(tmp_path, capsys, monkeypatch):
    card = tmp_path / "my-derm" / "card.yaml"
    card.parent.mkdir()
    card.write_text("name: my-derm\nmodality: dermoscopy\ntask: binary\n"
                    "classes: [{name: melanoma}, {name: nevus}]\nmanifest: manifest.csv\n")
    monkeypatch.chdir(tmp_path)
    code = cbm_main(["run", "hydra.job.chdir=true", "dataset=custom", "dataset.card=my-derm/card.yaml",
                     f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "card 'my-derm' has no manifest yet" in err, err  # found (it was "not found")


def test_a_stated_error_gets_no_hint_that_a_real_setting_is_not_one(tmp_path, capsys):
    from cbm.run import _unknown_key_hints

    # dataset.card is ??? in dataset=custom: a setting without a value yet, not a misspelt one
    assert _unknown_key_hints(["dataset=custom", "dataset.card=my-derm/card.yaml"]) == []
    code = cbm_main(["run", "dataset=custom", f"dataset.card={tmp_path / 'nope.yaml'}", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "data card not found" in err and "is not a setting" not in err, err


def test_missing_data_and_bad_head_settings_are_stated_plainly_before_any_encoding(tiny, tmp_path, capsys, monkeypatch):
    import cbm.encoders

    def no_encoding(*args, **kwargs):
        raise AssertionError("the encoder was loaded before the run's settings were checked")

    monkeypatch.setattr(cbm.encoders, "create_encoder", no_encoding)
    # a card whose manifest was never written: its absence, with the fix
    card = tmp_path / "no-manifest" / "card.yaml"
    card.parent.mkdir()
    card.write_text("name: no-manifest\nmodality: dermoscopy\ntask: binary\n"
                    "classes: [{name: melanoma}, {name: nevus}]\nmanifest: manifest.csv\n")
    code = cbm_main(["run", f"dataset.card={card}", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cbm run: error: card 'no-manifest' has no manifest yet")
    assert "columns path,label,split" in err and "Traceback" not in err
    # a head setting that cannot work
    code = cbm_main(["run", *tiny, "head.selection=concepts", "head.max_concepts_per_class=null",
                     f"hydra.run.dir={tmp_path / 'head'}"])
    err = capsys.readouterr().err
    assert code == 2 and "max_concepts_per_class" in err and "Traceback" not in err
    # what fitting would refuse only after encoding every image, and settings that would be misread
    for overrides, fragment in [
        (["optimized_metric=cbm_unconstraind.val_accuracy"], "measures no method 'cbm_unconstraind'"),
        (["baselines.linear_probe=false", "optimized_metric=linear_probe.val_accuracy"], "measures no method"),
        (["concepts.templates=[a dermoscopy photo]"], "exactly one '{}'"),
        (["concepts.list={melanom: [irregular border], benign nevus: [regular border]}"], "['melanom']"),
        (["save_model=no"], "save_model='no': write true or false"),
        (["baselines.linear_probe=off"], "baselines.linear_probe='off'"),
        (["+baselines.linear_prob=false"], "['linear_prob'] are not baselines"),
        (["evaluation.n_bootstrap=-5"], "n_bootstrap=-5"),
        (["concepts.list=[]"], "hold no phrase"),
        (["head.class_weight=foo"], "class_weight must be"),
        (["head.max_concepts_per_class=0"], "head: max_concepts_per_class must be > 0"),
        # numbers written as a switch, a text or a fraction: read as 1.0, "could not convert string to float",
        # or cut to a whole number without a word
        (["head.n_lambdas=true"], "head: n_lambdas must be a number; got True"),
        (["head.l1_ratio=true"], "head: l1_ratio must be a number; got True"),
        (["head.n_lambdas=2.5"], "head: n_lambdas must be a whole number; got 2.5"),
        (["head.l1_ratio=abc"], "head: l1_ratio must be a number; got 'abc'"),
        (["head.max_concepts_per_class=eight"], "head: max_concepts_per_class must be a number; got 'eight'"),
        (["head.prior_strength=abc"], "head: prior_strength must be a number; got 'abc'"),
        (["dataset.extra_metrics.abcd_rule._target_=cbm.demo.nope"],
         "dataset.extra_metrics.abcd_rule._target_='cbm.demo.nope' cannot be imported (ModuleNotFoundError"),
        # switches written as off, which would read as on; values the objects' own checks refuse
        (["head.intervention_training=off"], "head: intervention_training must be true or false; got 'off'"),
        (["head.use_prior=no"], "head: use_prior must be true or false"),
        (["bottleneck.centre=off"], "bottleneck: centre must be true or false; got 'off'"),
        (["bottleneck.calibrate=maybe"], 'bottleneck: calibrate must be true, false or "auto"'),
        (["+head.l1_ration=0.5"], "head: SparseConceptHead.__init__() got an unexpected keyword argument 'l1_ration'"),
        (["+dataset.demo.confunding=0.5"], "dataset.demo has no setting 'confunding' (did you mean 'confounding'?)"),
        (["dataset.demo.confounding=1.5"], "dataset.demo: confounding=1.5 must lie in [0, 1]"),
        # numbers of the run's own nodes: named, and refused before the encoder loads, not cut or crashed on
        (["seed=abc"], "seed='abc': write a whole number"),
        (["evaluation.n_bootstrap=abc"], "evaluation.n_bootstrap='abc': write a whole number"),
        (["evaluation.n_bootstrap=20.5"], "evaluation.n_bootstrap=20.5: write a whole number"),
        (["features.batch_size=0"], "features.batch_size=0: must be at least 1"),
        (["features.num_workers=-1"], "features.num_workers=-1: must be at least 0"),
        (["concepts.list=irregular border"], "concepts.list='irregular border': give a list of phrases"),
        (["head.class_weight={melanom: 2}"], "class_weight names 'melanom', which is no class of this card"),
        (["head.class_weight={melanoma: -1}"], "class_weight of 'melanoma' is -1: give a finite number"),
    ]:
        code = cbm_main(["run", *tiny, *overrides, f"hydra.run.dir={tmp_path / 'early'}"])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and "Traceback" not in err, (overrides, err)
    # a card without a concept store, whose LLM has no key or no server: said before any image is
    # encoded (the concepts are asked for after the encoder loads, and every image was encoded first)
    from cbm.demo import cached_dataset

    bare = tmp_path / "bare"
    shutil.copytree(cached_dataset(n=90, confounding=0.9, classes=2, seed=1, size=64).parent, bare)
    (bare / "concepts.json").unlink()
    card_doc = yaml.safe_load((bare / "card.yaml").read_text())
    card_doc.pop("concept_truth")  # its names are the store's, which is gone
    (bare / "card.yaml").write_text(yaml.safe_dump(card_doc))
    own = [o for o in tiny if not o.startswith(("dataset.card=", "++dataset.demo="))]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for llm, fragment in ((["llm=openai"], "$OPENAI_API_KEY, which is not set"),
                          (["llm=llamacpp", "llm.base_url=http://127.0.0.1:9/v1"], "cannot connect to http://127.0.0.1:9/v1")):
        code = cbm_main(["run", "dataset=custom", f"dataset.card={bare / 'card.yaml'}", *own, *llm,
                         f"hydra.run.dir={tmp_path / 'llm'}"])
        err = capsys.readouterr().err
        assert code == 2 and fragment in err and "Traceback" not in err, (llm, err)


def test_a_failing_job_does_not_stop_a_sweep(tiny, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    code = cbm_main(["run", "-m", "head.selection=concepts,accuracy", "head.max_concepts_per_class=null", *tiny,
                     f"hydra.sweep.dir={sweep}"])
    assert code != 0  # the sweep reports the failure...
    assert not (sweep / "0" / "metrics.json").exists() and (sweep / "1" / "metrics.json").is_file()  # ...after job 1 ran
    # as the error alone: not the chain of frames that reached it (one frame, of the job that raised it)
    err = capsys.readouterr().err
    err = err[err.index("Error executing job"):]
    assert 'cbm.run.JobFailed: head: selection="concepts" needs max_concepts_per_class' in err
    assert err.count('File "') == 1 and "During handling" not in err and "direct cause" not in err
    # the summary lists the failed job as such, and cbm compare reads the sweep's folder the same way
    rows = json.loads((sweep / "summary.json").read_text())
    # the job's own error, from the sweep's records
    assert rows[0]["status"].startswith('failed: head: selection="concepts" needs max_concepts_per_class')
    assert rows[1]["status"] == "ok" and rows[1]["chosen"]
    capsys.readouterr()
    assert cbm_main(["compare", str(sweep)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "Sweep sweep: finished; 2 job(s)."  # every planned job ended, though Hydra raised at the end
    assert table[4].startswith("| 0 | `head.selection=concepts`") and "failed: head: selection" in table[4]
    assert table[5].startswith("| 1 **(chosen)** | `head.selection=accuracy`")
    assert cbm_main(["compare", str(sweep / "1"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["chosen"] is True
    assert cbm_main(["compare", str(sweep), "--metric", "cbm.id_accuracy"]) == 2
    assert "never a test figure" in capsys.readouterr().err
    assert cbm_main(["compare", str(sweep), "--metric", "cbm.val_acuracy"]) == 2
    assert "no validation figure is called 'val_acuracy'" in capsys.readouterr().err
    assert cbm_main(["compare", str(sweep), str(sweep / "1")]) == 0  # a run given twice is one row
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1")]) == 1
    assert cbm_main(["compare", str(tmp_path / "nowhere")]) == 2
    assert "max_concepts_per_class" in (sweep / "0" / "run.log").read_text()


def test_a_sweep_of_unknown_size_that_a_failed_job_ends_is_marked_stopped(tiny, tmp_path, capsys, monkeypatch):
    """A sweeper whose job count cbm cannot tell (Optuna's) and that raises at a failed job never
    reaches the sweep's end: its record read "still running, or stopped" for ever. It is now marked
    stopped, with why, and the summary says so."""
    import cbm.pipeline.sweep_record as records

    monkeypatch.setattr(records, "planned_jobs", lambda config: None)  # what an Optuna sweep records
    sweep = tmp_path / "sweep"
    code = cbm_main(["run", "-m", "head.selection=concepts,accuracy", "head.max_concepts_per_class=null", *tiny,
                     f"hydra.sweep.dir={sweep}"])
    assert code != 0
    record = json.loads((sweep / "cbm_sweep.json").read_text())
    assert record["planned_jobs"] is None and record["finished"] is False
    assert record["stopped"].startswith("an error ended it")
    assert (sweep / "summary.md").read_text().splitlines()[2].startswith("Sweep sweep: **stopped** (an error ended it")
    capsys.readouterr()
    assert cbm_main(["compare", str(sweep)]) == 0
    assert capsys.readouterr().out.startswith("Sweep sweep: **stopped** (an error ended it")
    # with HYDRA_FULL_ERROR=1 the error comes through as it is: its first line is the reason
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(Exception, match="max_concepts_per_class"):
        cbm_main(["run", "-m", "head.selection=concepts,accuracy", "head.max_concepts_per_class=null", *tiny,
                  f"hydra.sweep.dir={tmp_path / 'full'}"])
    stopped = json.loads((tmp_path / "full" / "cbm_sweep.json").read_text())["stopped"]
    assert stopped.startswith("an error ended it: ") and "max_concepts_per_class" in stopped


@pytest.mark.parametrize("group", ["head", "encoder", "experiment"])
def test_every_node_with_a_target_instantiates_or_resolves(group):
    """lightning-hydra-template style: every config node names a public callable; head and bottleneck
    nodes are instantiated, encoder targets resolved (building BiomedCLIP needs its weights)."""
    from hydra.utils import get_method, instantiate

    from cbm.bottleneck import BottleneckConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for option in _options(group):
            cfg = compose("config", overrides=[f"{group}={option}"] if group != "experiment" else [f"experiment={option}"])
            assert callable(get_method(cfg.encoder._target_)) and cfg.encoder._target_ == "cbm.encoders.create_encoder"
            assert isinstance(instantiate(cfg.bottleneck), BottleneckConfig)
            head = instantiate(cfg.head)
            head.check_params()
            metric = str(cfg.optimized_metric)
            assert metric == "auto" or metric.split(".", 1)[1].startswith("val_")


def test_a_sweep_optimises_a_validation_figure_only():
    from cbm.run import sweep_value

    metrics = {"cbm": {"val_accuracy": 0.9, "val_worst_group_accuracy": None, "ood_accuracy": 0.8}}
    assert sweep_value(metrics, "cbm.val_accuracy") == 0.9
    with pytest.raises(ValueError, match="not a validation figure"):
        sweep_value(metrics, "cbm.ood_accuracy")
    with pytest.raises(ValueError, match="was not measured"):
        sweep_value(metrics, "cbm.val_worst_group_accuracy")
    with pytest.raises(ValueError, match="these are: cbm.val_accuracy"):
        sweep_value(metrics, "probe.val_accuracy")
    # auto: worst-group where the run measured it (the card has groups in val), else accuracy
    assert sweep_value(metrics, "auto") == 0.9
    grouped = {"cbm": {"val_accuracy": 0.9, "val_worst_group_accuracy": 0.7}}
    assert sweep_value(grouped, "auto") == 0.7
    with pytest.raises(ValueError, match="no validation figure is called 'val_acuracy'"):
        sweep_value(grouped, "cbm.val_acuracy")


def test_a_worst_group_metric_on_a_card_without_groups_is_refused_before_the_run():
    from types import SimpleNamespace

    from cbm.run import check_optimized_metric

    with pytest.raises(ValueError, match="card 'plain' names no group column.*cbm.val_accuracy or auto"):
        check_optimized_metric("cbm.val_worst_group_accuracy", ["cbm"], SimpleNamespace(name="plain", group_column=None))
    check_optimized_metric("cbm.val_worst_group_accuracy", ["cbm"], SimpleNamespace(name="demo", group_column="cue"))
    check_optimized_metric("auto", ["cbm"], SimpleNamespace(name="plain", group_column=None))


def test_a_sweep_metric_without_its_method_is_told_the_form():
    """``val_accuracy`` (no method) is a validation figure misnamed, not a test figure nor a method."""
    from cbm.run import check_optimized_metric

    for name in ("val_accuracy", ".val_accuracy", "cbm."):
        with pytest.raises(ValueError, match=r"write auto or METHOD\.FIGURE.*e\.g\. cbm\.val_accuracy"):
            check_optimized_metric(name, ["cbm", "linear_probe"])
        with pytest.raises(ValueError, match=r"write auto or METHOD\.FIGURE"):
            check_optimized_metric(name)


def test_a_test_figure_is_refused_before_the_run(tmp_path, capsys):
    """A sweep metric that is not a validation figure stops `cbm run` before any work is done."""
    from cbm.run import hydra_main

    assert hydra_main(["optimized_metric=cbm.ood_accuracy", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert "not a validation figure" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_no_issue_numbers_in_code_configs_or_docs():
    import re

    root = CONFIG_DIR.parent
    files = [*root.joinpath("cbm").rglob("*.py"), *root.joinpath("conf").rglob("*.yaml"), *root.joinpath("docs").rglob("*.md"),
             *root.joinpath("scripts").rglob("*.py"), root / "README.md"]
    found = [f"{p.relative_to(root)}: {m.group(0)}" for p in files if p.is_file()
             for m in re.finditer(r"\bissues? ?#?\d+", p.read_text(encoding="utf-8"), flags=re.IGNORECASE)]
    assert not found, found


def test_the_store_check_can_be_turned_off(tiny, tmp_path):
    run_dir = tmp_path / "off"
    assert cbm_main(["run", *tiny, "concepts.check_with_truth=false", "baselines.linear_probe=false",
                     "baselines.zero_shot=false", "baselines.dense_concepts=false", f"hydra.run.dir={run_dir}"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["cbm"]["store_check"] is None


def test_a_checked_store_entry_gets_no_weight(tiny, tmp_path):
    """300 images (150 to train on): enough to judge the demo store by its truth (in this seed's
    world the diameter's phi is -0.08, so both its phrases go); what the check drops is out of the
    saved model's prior and the faithful head gives it no weight."""
    run_dir = tmp_path / "run"
    overrides = [o if not o.startswith("++dataset.demo=") else "++dataset.demo={n: 300, confounding: 0.9, classes: 2, seed: 2, size: 64}"
                 for o in tiny]
    assert cbm_main(["run", *overrides, "baselines.linear_probe=false", "baselines.zero_shot=false",
                     "baselines.dense_concepts=false", f"hydra.run.dir={run_dir}"]) == 0
    check = json.loads((run_dir / "metrics.json").read_text())["cbm"]["store_check"]
    assert check["checked"] and check["concepts_checked"] >= 10 and check["dropped"]
    assert "Concept store checked against the card's concept truth" in (run_dir / "results.md").read_text()
    model = ConceptBottleneckModel.load(run_dir / "model")
    assert model.info["store_check"] == check
    names = model.bottleneck.concept_names
    for d in check["dropped"]:
        k, c = model.classes.index(d["class"]), names.index(d["concept"])
        assert d["association"] is None or d["association"] < 0.1
        assert model.concept_prior[k, c] == 0 and model.coef[k, c] == 0
    assert check["constrains_head"] is True
    # the concepts whose present / absent are annotated images' means are recorded for the reports
    assert model.info["levels_from_truth"] and set(model.info["levels_from_truth"]) <= set(names)


def test_a_faithful_head_with_the_prior_penalty_runs_beside_its_twin_with_the_penalty_alone(tiny, tmp_path):
    """The unconstrained twin drops the sign constraint and keeps every other setting, the prior
    penalty and the store it reads included (it used to lose the store and stop the run)."""
    run_dir = tmp_path / "penalty"
    assert cbm_main(["run", *tiny, "head.use_prior=true", "head.prior_strength=0.01", "baselines.linear_probe=false",
                     "baselines.zero_shot=false", "baselines.dense_concepts=false", f"hydra.run.dir={run_dir}"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"cbm", "cbm_unconstrained"}
    assert metrics["cbm_unconstrained"]["faithfulness"]["measured"]


def test_a_head_without_a_prior_is_judged_against_the_checked_store(tiny, tmp_path):
    """The unconstrained head (head=sparse) takes no prior, but the class card and the report judge
    its weights against the store: the store checked against the truth, as for the faithful head, and
    the card says the head was not fitted under it."""
    from cbm.explain.card import render_class_card_html

    run_dir = tmp_path / "sparse"
    overrides = [o if not o.startswith("++dataset.demo=") else "++dataset.demo={n: 300, confounding: 0.9, classes: 2, seed: 2, size: 64}"
                 for o in tiny]
    assert cbm_main(["run", *overrides, "head=sparse", "baselines.linear_probe=false", "baselines.zero_shot=false",
                     "baselines.dense_concepts=false", "baselines.cbm_unconstrained=false", f"hydra.run.dir={run_dir}"]) == 0
    check = json.loads((run_dir / "metrics.json").read_text())["cbm"]["store_check"]
    assert check["checked"] and check["constrains_head"] is False and check["dropped"]
    assert "left the store its weights are judged against" in (run_dir / "results.md").read_text()
    model = ConceptBottleneckModel.load(run_dir / "model")
    d = check["dropped"][0]
    k, c = model.classes.index(d["class"]), model.bottleneck.concept_names.index(d["concept"])
    assert model.concept_prior[k, c] == 0
    model.coef[k, c], model.coef[1 - k, c] = 0.5, -0.5  # towards the class the truth did not bear out (net 1.0)
    assert (d["class"], d["concept"], 1.0) in [(cls, con, round(w, 3)) for cls, con, w in model.contradicting_weights()]
    html = render_class_card_html(model)
    assert "its weights are judged against (this head is not constrained by them)" in html


def test_a_class_weight_by_class_name_runs(tiny, tmp_path, capsys):
    # a config names classes; the head is fitted on their indices (and Hydra's DictConfig was no dict to it)
    run = tmp_path / "weighted"
    assert cbm_main(["run", *tiny, "head.class_weight={melanoma: 3, benign nevus: 1}", f"hydra.run.dir={run}"]) == 0, \
        capsys.readouterr().err
    assert ConceptBottleneckModel.load(run / "model").info["head"]["class_weight"] == {"1": 3.0, "0": 1.0}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_one_line_naming_the_encoder(tiny, tmp_path, capsys):
    code = cbm_main(["run", *tiny, "device=cuda", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "cbm run: error: encoder: device 'cuda' was asked for but CUDA is not available" in err, err
    assert "Error executing job" not in err


def test_a_run_folder_used_again_keeps_no_output_of_the_earlier_run(tiny, tmp_path, capsys):
    run = tmp_path / "again"
    assert cbm_main(["run", *tiny, f"hydra.run.dir={run}"]) == 0
    assert (run / "model" / "model.json").is_file()
    (run / "skipped_files.json").write_text('[{"split": "train", "path": "broken.png", "reason": "an earlier run"}]')
    assert cbm_main(["run", *tiny, "save_model=false", "head.l1_ratio=0.5", f"hydra.run.dir={run}"]) == 0
    assert not (run / "model").exists()  # the earlier model would be explained as this run's
    assert not (run / "skipped_files.json").exists()  # this run skipped nothing
    assert "head.l1_ratio=0.5" in (run / ".hydra" / "overrides.yaml").read_text()
    # a folder named model that is not a saved model is not this run's to remove
    (run / "model").mkdir()
    (run / "model" / "notes.txt").write_text("mine")
    assert cbm_main(["run", *tiny, "save_model=false", f"hydra.run.dir={run}"]) == 0
    assert (run / "model" / "notes.txt").read_text() == "mine"
    assert not (run / "earlier_run").exists()  # set aside while this run worked, gone once it finished
    # a run that fails on its input (or is interrupted) after Hydra wrote its config leaves no earlier
    # result beside that config, and loses none: they wait in earlier_run/, through another failure too
    before = (run / "metrics.json").read_text()
    for _ in range(2):
        assert cbm_main(["run", *tiny, "head.l1_ratio=7", f"hydra.run.dir={run}"]) == 2
        assert "head.l1_ratio=7" in (run / ".hydra" / "overrides.yaml").read_text()
        assert not any((run / f).exists() for f in ("metrics.json", "results.md", "path.svg", "timings.json"))
        assert (run / "earlier_run" / "metrics.json").read_text() == before
    assert cbm_main(["run", *tiny, f"hydra.run.dir={run}"]) == 0
    assert (run / "metrics.json").is_file() and (run / "model" / "model.json").is_file()
    assert not (run / "earlier_run").exists()
    capsys.readouterr()


def test_run_experiment_takes_switches_as_true_or_false_only():
    from cbm.pipeline.experiment import check_baselines

    assert check_baselines({"linear_probe": False})["linear_probe"] is False
    with pytest.raises(ValueError, match="baselines.linear_probe='off': write true or false"):
        check_baselines({"linear_probe": "off"})


def test_a_card_of_ones_own_runs_and_a_failing_metric_hook_loses_nothing(tiny, tmp_path, capsys):
    """`dataset=custom dataset.card=PATH` runs the method on any card; without the card the run stops at
    once, naming the setting; a dataset's `extra_metrics` hook that fails (the demo's ABCD rule on a card
    without its classes) is recorded as not measured, and the run's results and model are still written."""
    from cbm.demo import cached_dataset

    assert cbm_main(["run", "dataset=custom", f"hydra.run.dir={tmp_path / 'none'}"]) != 0
    assert "dataset.card" in capsys.readouterr().err
    card = cached_dataset(n=90, confounding=0.9, classes=2, seed=1, size=64)
    run_dir = tmp_path / "own"
    own = [o for o in tiny if not o.startswith(("dataset.card=", "++dataset.demo="))]
    assert cbm_main(["run", "dataset=custom", f"dataset.card={card}", *own, "baselines.linear_probe=false",
                     "baselines.zero_shot=false", "baselines.dense_concepts=false",
                     "++dataset.extra_metrics.broken={_target_: builtins.divmod, _partial_: true}",
                     f"hydra.run.dir={run_dir}"]) == 0
    capsys.readouterr()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["cbm"]["broken"]["measured"] is False and "TypeError" in metrics["cbm"]["broken"]["reason"]
    assert "| cbm |" in (run_dir / "results.md").read_text()
    assert ConceptBottleneckModel.load(run_dir / "model").classes == ["benign nevus", "melanoma"]


def test_skipped_files_lists_every_unreadable_image_and_every_manifest_row_left_out(tiny, tmp_path, capsys):
    """A row whose file is missing (or whose label is no class) was counted in model.json and shown by its
    first few examples in the log, but listed nowhere in full: skipped_files.json now names each one with
    its line, beside the unreadable images."""
    import csv

    from cbm.demo import cached_dataset

    card = tmp_path / "card"
    shutil.copytree(cached_dataset(n=90, confounding=0.9, classes=2, seed=1, size=64).parent, card)
    with open(card / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    train = [r["path"] for r in rows if r["split"] == "train"]
    (card / "images" / train[0]).unlink()
    (card / "images" / train[1]).write_bytes(b"not an image")
    with open(card / "manifest.csv", "a", newline="", encoding="utf-8") as f:
        csv.DictWriter(f, fieldnames=list(rows[0])).writerow({**rows[0], "path": f"{train[2]}x", "label": "melanomma",
                                                              "split": "val"})
    run_dir = tmp_path / "run"
    own = [o for o in tiny if not o.startswith(("dataset.card=", "++dataset.demo="))]
    assert cbm_main(["run", "dataset=custom", f"dataset.card={card / 'card.yaml'}", *own, "baselines.linear_probe=false",
                     "baselines.zero_shot=false", "baselines.dense_concepts=false", f"hydra.run.dir={run_dir}"]) == 0
    capsys.readouterr()
    skipped = json.loads((run_dir / "skipped_files.json").read_text())
    by_path = {s["path"]: s for s in skipped}
    line = {r["path"]: 2 + i for i, r in enumerate(rows)}  # the header is line 1
    assert len(skipped) == 3 and by_path[train[1]]["split"] == "train" and by_path[train[1]]["line"] == line[train[1]]
    missing = by_path[train[0]]
    assert missing["split"] == "train" and missing["line"] == 2 + rows.index(next(r for r in rows if r["path"] == train[0]))
    assert missing["reason"].startswith("the row whose image file does not exist under ")
    assert by_path[f"{train[2]}x"] == {"line": len(rows) + 2, "split": "val", "path": f"{train[2]}x", "reason": (
        "the row with a label that is not a class of the card (classes: benign nevus, melanoma)")}
    info = ConceptBottleneckModel.load(run_dir / "model").info
    assert info["manifest_rows_left_out"] == {"unknown_label": 1, "missing_file": 1} and info["data"]["train"]["skipped"] == 1


def test_a_split_whose_every_image_is_unreadable_is_named_with_its_files_before_any_fitting(tiny, tmp_path, capsys):
    # every test image unreadable: the cbm head was fitted, then the linear probe failed on an empty
    # array ("Found array with 0 sample(s)") and the run left no model and no figures
    import csv

    from cbm.demo import cached_dataset
    from cbm.errors import ManifestError
    from cbm.pipeline import fit_model

    card = tmp_path / "card"
    shutil.copytree(cached_dataset(n=90, confounding=0.9, classes=2, seed=1, size=64).parent, card)
    with open(card / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    root = card / "images"
    for split in ("test", "val"):
        broken = [r["path"] for r in rows if r["split"] == split]
        for path in broken:
            (root / path).write_bytes(b"not an image")
        own = [o for o in tiny if not o.startswith(("dataset.card=", "++dataset.demo="))]
        code = cbm_main(["run", "dataset=custom", f"dataset.card={card / 'card.yaml'}", *own,
                         f"hydra.run.dir={tmp_path / split}"])
        err = capsys.readouterr().err
        # (one line: the skipped images' warnings may meet a log stream an earlier test's capture closed)
        line = next(t for t in err.splitlines() if t.startswith("cbm run: error: "))
        assert code == 2 and "Found array" not in err, err
        assert f"none of the {len(broken)} '{split}' image(s) could be read: " in line and broken[0].split("/")[-1] in line
        assert {"test": "test is where a run measures the method", "val": "the head is chosen on val"}[split] in line
        assert "cbm validate CARD" in line
    with pytest.raises(ManifestError, match=r"none of the \d+ 'val' image\(s\) could be read"):  # the Python API too
        fit_model(card / "card.yaml", encoder=next(o for o in tiny if o.startswith("encoder.name="))[len("encoder.name="):])


def test_a_store_of_one_concept_is_refused_before_encoding_unless_centring_is_off(tiny, tmp_path, capsys, monkeypatch):
    # one concept passed validate, then fitting stopped after every image was encoded, with
    # "centring needs at least 2 concepts ... pass centre=False", which neither a run nor cbm.fit takes
    import cbm.encoders
    from cbm.demo import cached_dataset
    from cbm.pipeline import fit_model

    card = tmp_path / "card"
    shutil.copytree(cached_dataset(n=90, confounding=0.9, classes=2, seed=1, size=64).parent, card)
    text = (card / "card.yaml").read_text()
    (card / "card.yaml").write_text(text[: text.index("concept_truth:")] if "concept_truth:" in text else text)
    (card / "concepts.json").write_text(json.dumps({"format": "cbm-concepts/1", "by_class": {
        "melanoma": {"concepts": ["irregular border"]}, "benign nevus": {"concepts": []}}}))
    own = [o for o in tiny if not o.startswith(("dataset.card=", "++dataset.demo="))]
    args = ["run", "dataset=custom", f"dataset.card={card / 'card.yaml'}", *own, "baselines.linear_probe=false",
            "baselines.zero_shot=false", "baselines.dense_concepts=false"]
    real = cbm.encoders.create_encoder

    def no_encoding(*args, **kwargs):
        raise AssertionError("the encoder was loaded before the concepts were checked")

    monkeypatch.setattr(cbm.encoders, "create_encoder", no_encoding)
    code = cbm_main([*args, f"hydra.run.dir={tmp_path / 'one'}"])
    line = next(t for t in capsys.readouterr().err.splitlines() if t.startswith("cbm run: error: "))
    assert code == 2 and "has 1 concept ('irregular border') in its store and the run's list together, but the " \
                         "bottleneck is centred on the mean" in line
    assert "`bottleneck.centre=false` in a run" in line
    monkeypatch.setattr(cbm.encoders, "create_encoder", real)
    encoder = next(o for o in tiny if o.startswith("encoder.name="))[len("encoder.name="):]
    with pytest.raises(ValueError, match="BottleneckConfig"):  # cbm.fit: before any image is encoded too
        fit_model(card / "card.yaml", encoder=real(encoder), splits=None)
    assert cbm_main([*args, "bottleneck.centre=false", f"hydra.run.dir={tmp_path / 'off'}"]) == 0


def test_the_demo_abcd_hook_on_a_card_without_its_classes_is_not_measured_and_says_why():
    from types import SimpleNamespace

    import numpy as np

    from cbm.demo import abcd_rule_metric
    from cbm.pipeline.experiment import _extra_metric, _notes

    model = SimpleNamespace(bottleneck=SimpleNamespace(concept_names=["asymmetric shape"]), coef=np.zeros((2, 1)),
                            classes=["nevus", "melanoma"])
    out = _extra_metric("abcd_rule", abcd_rule_metric, SimpleNamespace(model=model))
    assert out["measured"] is False and "'benign nevus'" in out["reason"]
    assert _notes({"cbm": {"abcd_rule": out}}) == [f"ABCD rule not measured: {out['reason']}."]


def test_a_full_disk_while_writing_the_results_names_the_file_and_the_fix(tiny, tmp_path, capsys, monkeypatch):
    """The disk fills as the run writes metrics.json: the error said only "[Errno 28] No space left on
    device", naming neither the file nor what to do."""
    import errno

    import cbm.utils

    real_mkstemp, real_fsync, names = cbm.utils.tempfile.mkstemp, cbm.utils.os.fsync, {}

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        names[fd] = name
        return fd, name

    def fsync(fd):
        if ".metrics.json." in Path(names.get(fd, "")).name:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(cbm.utils.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(cbm.utils.os, "fsync", fsync)
    run_dir = tmp_path / "run"
    code = cbm_main(["run", *tiny, "baselines.linear_probe=false", "baselines.dense_concepts=false",
                     "baselines.cbm_unconstrained=false", f"hydra.run.dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"No space left on device: '{run_dir / 'metrics.json'}'" in err, err
    assert f"free space on the disk holding {run_dir}" in err
    assert not (run_dir / "metrics.json").exists() and not list(run_dir.glob(".*.tmp"))


def test_a_target_that_cannot_be_imported_is_named_with_why(tmp_path, monkeypatch):
    """A _target_ naming nothing, or a module whose own import fails, is bad input naming the node and the
    missing module; an ImportError raised inside a target that was found keeps Hydra's error as it is."""
    from hydra.errors import InstantiationException

    from cbm.run import _instantiate

    (tmp_path / "plugin_needs_more.py").write_text("import a_package_not_installed\ndef make():\n    pass\n")
    (tmp_path / "plugin_imports_late.py").write_text("def make():\n    import a_package_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"^encoder._target_='plugin_needs_more.make' cannot be imported \(ModuleNotFound"
                                         r"Error\(\"No module named 'a_package_not_installed'\"\)"):
        _instantiate({"_target_": "plugin_needs_more.make"}, "encoder")
    with pytest.raises(InstantiationException, match="Error in call to target 'plugin_imports_late.make'"):
        _instantiate({"_target_": "plugin_imports_late.make"}, "encoder")
