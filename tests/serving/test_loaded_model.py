"""A loaded version's runs (`serving.loaded_model`): the run timeouts its callables are built for."""

import numpy as np
import pytest


@pytest.mark.parametrize("seconds, ms", [(None, 0), (0.0, 1), (-3.0, 1), (0.0421, 45), (0.345, 362),
                                         (9.987, 11_585), (30.0, 32_768), (27.6, 32_768), (27.5, 27_554),
                                         (123.4, 131_072)])
def test_run_timeouts_round_up_to_a_ladder_of_four_rungs_per_doubling(seconds, ms):
    from serving import loaded_model
    assert loaded_model._timeout_bucket_ms(seconds) == ms


def test_run_timeout_rungs_are_never_early_and_at_most_19_percent_late():
    from serving import loaded_model
    for ms in np.unique(np.geomspace(1, 10 ** 8, 5000).round()):
        rung = loaded_model._timeout_bucket_ms(ms / 1000.0)
        assert ms <= rung <= max(ms * 1.19, ms + 1), (ms, rung)
