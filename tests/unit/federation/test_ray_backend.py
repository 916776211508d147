import os

import pytest

from fedai.errors import ConfigError
from fedai.federation.ray_backend import RAY_ADDRESS_ENV, backend_config, resolve_address


def test_an_address_comes_from_the_flag_then_from_ray_address(monkeypatch):
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    assert resolve_address(None) is None
    assert resolve_address("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.setenv(RAY_ADDRESS_ENV, "10.0.0.9:6379")
    assert resolve_address(None) == "10.0.0.9:6379"
    assert resolve_address("10.0.0.5:6379") == "10.0.0.5:6379"


def test_a_private_ray_gets_this_machines_cpus_and_the_per_client_resources():
    config = backend_config(
        address=None, num_cpus_per_client=1.0, num_gpus_per_client=0.5, verbose=False
    )
    assert config["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert config["init_args"]["num_cpus"] == (os.cpu_count() or 1)
    assert "address" not in config["init_args"]


def test_attaching_passes_the_address_and_no_cpu_count():
    # Ray refuses num_cpus/num_gpus when connecting to an existing cluster.
    config = backend_config(
        address="127.0.0.1:6379", num_cpus_per_client=2.0, num_gpus_per_client=1.0, verbose=True
    )
    assert config["init_args"]["address"] == "127.0.0.1:6379"
    assert "num_cpus" not in config["init_args"]
    assert "num_gpus" not in config["init_args"]
    assert config["client_resources"] == {"num_cpus": 2.0, "num_gpus": 1.0}


def test_bad_resources_are_refused_together():
    with pytest.raises(ConfigError) as info:
        backend_config(
            address=None, num_cpus_per_client=0.0, num_gpus_per_client=-1.0, verbose=False
        )
    assert info.value.problems == [
        "--client-cpus must be > 0; got 0.0",
        "--client-gpus must be >= 0; got -1.0",
    ]


def test_more_cpus_per_client_than_a_private_ray_has_is_refused_but_a_cluster_may_have_them():
    too_many = float((os.cpu_count() or 1) + 1)
    with pytest.raises(ConfigError, match="fit on this machine's private Ray"):
        backend_config(
            address=None, num_cpus_per_client=too_many, num_gpus_per_client=0.0, verbose=False
        )
    config = backend_config(
        address="10.0.0.5:6379",
        num_cpus_per_client=too_many,
        num_gpus_per_client=0.0,
        verbose=False,
    )
    assert config["client_resources"]["num_cpus"] == too_many
