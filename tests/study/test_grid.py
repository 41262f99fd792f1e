import pytest
import yaml

from xferlab.demo import config_path
from xferlab.errors import XferlabError
from xferlab.files import read_yaml
from xferlab.study.grid import expand_grid, load_study, preflight, retry_advice, run_name


def test_the_grid_is_every_backbone_regime_and_seed_with_its_overrides(study_yaml):
    path = study_yaml(backbones=["resnet18", "resnet34"],
                       regimes=["frozen", "partial:1"], seeds=[0, 7],
                       per_backbone={"resnet34": {"batch_size": 4}}, per_regime={"partial:1": {"epochs": 3}})
    specs = expand_grid(load_study(path))
    assert [s.name for s in specs] == [run_name(b, r, s) for b in ("resnet18", "resnet34")
                                       for r in ("frozen", "partial:1") for s in (0, 7)]
    assert specs[2].name == "resnet18-partial1-seed0"
    by_name = {s.name: s.config for s in specs}
    assert by_name["resnet34-partial1-seed7"].batch_size == 4 and by_name["resnet34-partial1-seed7"].epochs == 3
    assert by_name["resnet18-frozen-seed7"].batch_size == 8 and by_name["resnet18-frozen-seed7"].epochs == 1
    assert by_name["resnet18-frozen-seed7"].seed == 7 and by_name["resnet18-frozen-seed7"].weights == "none"


def test_command_line_options_override_the_file_and_the_data_path_becomes_absolute(study_yaml, tiny_npy, monkeypatch):
    path = study_yaml(data="elsewhere", per_regime={"frozen": {"epochs": 5, "lr": 0.1}})
    monkeypatch.chdir(tiny_npy.parent)
    study = load_study(path, data=tiny_npy.name, train={"epochs": 2})
    assert study.data.path == tiny_npy.resolve()
    configs = {s.regime: s.config for s in expand_grid(study)}
    assert configs["frozen"].epochs == 2 and configs["finetune"].epochs == 2 and configs["frozen"].lr == 0.1


@pytest.mark.parametrize("values, message", [
    ({"train": {"epoch": 3}}, "unknown training option 'epoch' (did you mean 'epochs'?)"),
    ({"train": {"backbone": "resnet34"}}, "'backbone' is set by the study grid"),
    ({"regimes": ["frozn"]}, "did you mean 'frozen'"),
    ({"seeds": [0, 0]}, "repeated: 0"),
    ({"backbones": []}, "'backbones'"),
    ({"per_backbone": {"resnet43": {"lr": 0.1}}}, "per_backbone names 'resnet43' (did you mean 'resnet18'?)"),
    ({"per_backbone": {"resnet18": {"lr": 0.1}}, "per_regime": {"frozen": {"lr": 0.2}}},
     "'lr' is set for backbone resnet18 and for regime frozen"),
    ({"train": {"batch_size": 0}}, "batch_size"),
    ({"colour": "blue"}, "unknown key 'colour'"),
])
def test_bad_study_files_are_one_line_errors(study_yaml, values, message):
    path = study_yaml(**values)
    with pytest.raises(XferlabError) as err:
        expand_grid(load_study(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_study_without_a_data_path_asks_for_one(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("backbones: [resnet18]\n")
    with pytest.raises(XferlabError, match="pass --data"):
        load_study(path)


def test_preflight_rejects_unknown_backbones_and_missing_weights_before_any_run(study_yaml, tmp_path):
    with pytest.raises(XferlabError, match="did you mean 'resnet18'"):  # now when the study is read
        load_study(study_yaml("a.yaml", backbones=["resnet81"]))
    offline = load_study(study_yaml("b.yaml", train={"weights": "imagenet"}))
    with pytest.raises(XferlabError, match="resnet18-f37072fd.pth"):  # the file to place in the empty TORCH_HOME
        preflight(expand_grid(offline))
    missing_file = load_study(study_yaml("c.yaml", train={"weights": str(tmp_path / "w.pt")}))
    with pytest.raises(XferlabError, match="does not exist"):
        preflight(expand_grid(missing_file))


def test_the_reference_config_is_the_reference_study(tiny_npy):
    study = load_study(config_path("reference.yaml"), data=tiny_npy)
    specs = expand_grid(study)
    assert [(s.backbone, s.regime) for s in specs] == [("resnet18", "frozen"), ("resnet18", "finetune"),
                                                      ("resnet34", "frozen"), ("resnet34", "finetune")]
    for s in specs:
        c = s.config
        assert (c.epochs, c.lr, c.batch_size, c.scheduler, c.weights, c.data.format) == \
            (30, 1e-3, 32, "cosine", "imagenet", "npy")
    with pytest.raises(XferlabError, match="pass --data"):
        load_study(config_path("reference.yaml"))


@pytest.mark.parametrize("doc, advice", [
    # only the diverged run reads its rate there: lower it where it is
    ({"per_regime": {"finetune": {"lr": 0.1}}}, "lower per_regime.finetune.lr in the study YAML"),
    # train.lr is also the finished frozen run's: lowering it there would make the resumed study refuse that run
    ({"train": {"lr": 0.1}}, "set a lower lr for them under per_regime: per_regime.finetune.lr"),
    ({}, "set a lower lr for them under per_regime: per_regime.finetune.lr"),  # the default
    # a per_backbone lr forbids a per_regime one; the frozen run of the same backbone finished: no clean place
    ({"per_backbone": {"resnet18": {"lr": 0.1}}}, "finished runs whose lr changes with it are refused on resume"),
])
def test_retry_advice_names_a_place_that_leaves_finished_runs_as_they_were(tmp_path, doc, advice):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc) if doc else "name: s\n")
    finished = [{"backbone": "resnet18", "regime": "frozen"}]
    diverged = [{"backbone": "resnet18", "regime": "finetune"}]
    assert advice in retry_advice(read_yaml(path), diverged, finished)


def test_retry_advice_covers_every_diverged_run(tmp_path):
    """Two runs diverged reading the rate from two places: the advice names a place for each, not the first's."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"per_regime": {"adabn": {"lr": 0.1}}}))
    diverged = [{"backbone": "resnet18", "regime": "adabn"}, {"backbone": "resnet18", "regime": "finetune"}]
    advice = retry_advice(read_yaml(path), diverged, [{"backbone": "resnet18", "regime": "frozen"}])
    assert advice == "set a lower lr for them under per_regime: per_regime.adabn.lr, per_regime.finetune.lr"
