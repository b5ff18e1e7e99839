"""Fixtures shared by every test folder."""
import pytest


@pytest.fixture(scope="module")
def local_ray():
    """A 2-CPU local Ray for the module; featurize() reuses an initialised Ray."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
