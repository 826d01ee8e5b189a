"""The short chaos run (``fm-stress --chaos 0``: one round of episodes per input mode) over real DDS: in mono,
rgbd and stereo the lifecycle node gets reordered, duplicated, dropped and bursting frames, stamps jumping
back (a bag played again, ``/clock`` restarting), camera_info changing resolution and model, partners
missing, late, early, off by a few ms or of another size, unknown encodings, a deactivate/activate, while a
thread changes parameters atomically. It stays up, counts every rejected input by reason, answers a good
frame after each episode, and accounts for every image it received (feature_matcher_ros/measure/chaos.py)."""

import pytest

from feature_matcher_ros.measure import chaos
from feature_matcher_ros.measure.dds_loss import DEFAULT_PROFILE, profile_env
from feature_matcher_ros.resources import config_file

ENV = profile_env(str(config_file(DEFAULT_PROFILE)))


@pytest.mark.parametrize("mode", chaos.MODES)
def test_one_round_of_chaos_leaves_the_node_serving(mode, shared):
    lines = []
    result = chaos.run_mode(mode, 0.0, shared / "data", env=ENV, log=lines.append)
    print("\n".join(lines[-60:]))
    print(chaos.format_table([result]))
    assert result.problems == [], result.problems
    names = {e.name for e in result.episodes}
    assert {"reorder", "bag_replayed", "clock_restart", "resolution", "lifecycle"} <= names
    if mode != "mono":
        assert {"partner_missing", "partner_late", "partner_size"} <= names
    assert all(e.counted and e.answered for e in result.episodes)
    d = result.diagnostics
    assert int(d["time_jumps"]) >= 2 and int(d["rejected.stamp_backwards"]) >= 1
    assert result.params_accepted >= 1 and result.alive and result.exit_code == 0
