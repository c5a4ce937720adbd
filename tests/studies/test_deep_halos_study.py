"""tfhalo.studies.deep_halos end to end on a tiny user suite, and its bootstrap intervals."""

import json

import numpy as np
import pytest

from tests.helpers.tiny_sims import make_tiny_suite
from tfhalo.evaluation import evaluate_predictions, kl_divergence, pearson_r
from tfhalo.evaluation.metrics import bootstrap_interval
from tfhalo.studies import deep_halos


def test_intervals_cover_every_reported_number_and_skip_null_subsets():
    rng = np.random.default_rng(8)
    n = 300
    true = rng.uniform(11, 13.4, n)
    r = rng.uniform(0, 1.5, n)
    r[:5] = 0.5  # a small "mid" region: too few particles for a number, so no interval either
    r[5:] = np.where(np.abs(r[5:] - 0.5) <= 0.1, 0.3, r[5:])
    preds = {"raw": true + rng.normal(0, 0.2, n), "random": rng.uniform(11, 13.4, n)}
    ev = evaluate_predictions(true, r, preds, [("raw", "random")], (11, 13.4), n_mass_bins=3)
    iv = deep_halos.evaluation_intervals(true, r, preds, ev, (11, 13.4), n_boot=16, seed=3)
    assert ev["kl"]["raw||random"]["by_region"]["mid"] is None
    assert iv["kl"]["raw||random"]["by_region"]["mid"] is None
    assert iv["models"]["raw"]["by_region"]["mid"] is None
    res = {k: v - true for k, v in preds.items()}
    boot = dict(n_boot=16, seed=3, median_bias_correct=True)
    expected_kl = bootstrap_interval(lambda p, q: kl_divergence(p, q), res["raw"], res["random"], **boot)
    np.testing.assert_allclose(iv["kl"]["raw||random"]["all"], expected_kl, rtol=1e-9)  # batched == looped
    assert iv["models"]["raw"]["all"] == list(bootstrap_interval(pearson_r, preds["raw"], true, **boot))
    lo, hi = iv["kl"]["raw||random"]["all"]
    assert lo <= ev["kl"]["raw||random"]["all"] <= hi
    for pair in ev["kl"].values():
        for sub, value in pair["by_mass_bin_and_region"].items():
            assert (value is None) == (iv["kl"]["raw||random"]["by_mass_bin_and_region"][sub] is None)


def test_tiny_study_runs_resumes_and_reports_intervals(tmp_path, capsys):
    from tfhalo.sim import write_simulation
    from tfhalo.studies.results_doc import load_results

    suite = tmp_path / "suite"
    suite.mkdir()
    for i, sim in enumerate(make_tiny_suite(3, seed=80, n_side=10)):
        write_simulation(sim, suite / f"sim_{i}.h5")
    cfg = deep_halos.Config(n_sims=3, subbox_size=5, conv_filters=(2,), pool_after=(True,), dense_units=(4,),
                            n_train=40, n_validation=16, n_test=60, epochs=2, batch_size=16, patience=1,
                            log_mass_range=(10.0, 14.0), workers=1, standardizer_particles=40,
                            predict_batch_size=64, configs=("raw",), gbt=True, export=False, n_boot=20)
    out = tmp_path / "study"
    results = deep_halos.run(cfg, suite, out, progress=False)

    rows = {row["quantity"]: row for row in results["summary"]}
    raw = rows["Pearson r, raw-density CNN"]
    assert raw["value"] == pytest.approx(results["evaluation"]["models"]["raw"]["all"]["pearson_r"])
    assert raw["error_kind"] == "68% bootstrap" and raw["error"][0] <= raw["value"] <= raw["error"][1]
    assert rows["D_KL(raw || gbt)"]["paper"] == 0.03
    kl = rows["D_KL(raw || random)"]
    assert kl["paper"] == 0.40 and kl["error"] == results["evaluation"]["intervals"]["kl"]["raw||random"]["all"]
    assert (results["config"], results["seed"]) == (cfg.to_dict(), 0)
    assert "cores" in results["machine"]
    assert all((out / path).is_file() for path in results["figures"].values())
    report = (out / "report.md").read_text()
    assert f"{kl['value']:.3f} [{kl['error'][0]:.3f}, {kl['error'][1]:.3f}]" in report
    assert load_results(out)[0]["summary"] == results["summary"]

    capsys.readouterr()
    again = deep_halos.run(cfg, suite, out, progress=True)  # resumes: nothing is trained again
    log = capsys.readouterr().out
    assert "raw: already trained" in log and "GBT baseline" not in log  # the GBT's predictions are cached too
    assert again["summary"] == results["summary"]
    (out / "predictions" / "raw.npz").unlink()  # a trained model without predictions: loaded, not retrained
    assert deep_halos.run(cfg, suite, out, progress=False)["summary"] == results["summary"]
    with pytest.raises(deep_halos.StaleCacheError, match=r"epochs: cached 2, now 3"):
        deep_halos.run(deep_halos.Config(**{**cfg.to_dict(), "epochs": 3}), suite, out, progress=False)
    assert json.loads((out / "results.json").read_text())["summary"] == results["summary"]
