"""Smoke test of the benchmark CLI on a tiny configuration, so it cannot rot."""

from __future__ import annotations

import json

import pytest

from hpff_zoo import benchmark


def test_memory_and_speed_commands_write_results(tmp_path):
    common = ["--model", "hpff_resnet32", "--num-modules", "4", "--batch-size", "4"]
    configs = ["--configs", "e2e,dgl,dgl+hpff", "--out", str(tmp_path)]
    memory = benchmark.main(["memory", *common, *configs])
    speed = benchmark.main(["speed", *common, *configs, "--repetitions", "2"])
    assert [r.config for r in memory] == ["e2e", "dgl", "dgl+hpff"]
    assert all(r.peak_mib > 0 for r in memory)
    assert all(r.step_seconds_min <= r.step_seconds <= r.step_seconds_max for r in speed)
    # HiLo adds a cascade auxiliary and an input-gradient pass: more arithmetic than plain DGL.
    assert speed[2].gflops > speed[1].gflops > 0
    record = json.loads((tmp_path / "speed_hpff_resnet32_bs4.json").read_text())
    assert record["results"][0]["config"] == "e2e"
    assert "| dgl+hpff |" in (tmp_path / "memory_hpff_resnet32_bs4.md").read_text()


@pytest.mark.parametrize("config", ["sgd", "dgl+lora", "e2e+hilo"])
def test_bad_configuration_names_are_rejected(config):
    with pytest.raises(ValueError, match=r"configuration|unknown method"):
        benchmark.model_kwargs(config)
