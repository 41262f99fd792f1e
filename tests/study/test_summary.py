from xferlab.study import collect_results
from xferlab.study.summary import ranked, summary_table


def test_configurations_are_ranked_by_test_accuracy_and_tabulated(trained_study):
    results = collect_results(trained_study)
    configs = ranked(results)
    means = [c["test"]["accuracy"]["mean"] for c in configs]
    assert means == sorted(means, reverse=True) and [c["rank"] for c in configs] == [1, 2]
    lines = summary_table(results).splitlines()
    assert lines[0].split()[:5] == ["#", "backbone", "regime", "val", "acc"]
    assert len(lines) == 3
    for line, c in zip(lines[1:], configs):
        assert line.split()[:3] == [str(c["rank"]), "resnet18", c["regime"]]
        assert f"{c['test']['accuracy']['mean']:.3f} ± {c['test']['accuracy']['sd']:.3f} (n=2)" in line
