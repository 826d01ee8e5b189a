"""The Fast DDS transport profile for large images: it parses, child processes really load it, and with
it 640x480 and 1280x720 rgb8 frames survive best-effort DDS between two processes.

The loss with Fast DDS's built-in transports is measured and printed (run with ``-s``), not asserted:
it depends on the machine.
"""

import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from feature_matcher_ros.measure import dds_loss
from feature_matcher_ros.resources import config_file

PROFILE = config_file(dds_loss.DEFAULT_PROFILE)
NS = {"dds": "http://www.eprosima.com"}
MIB = 1 << 20


def test_profile_parses_and_wires_its_transports():
    root = ET.parse(PROFILE).getroot()
    assert root.tag == "{http://www.eprosima.com}dds"
    descriptors = {d.findtext("dds:transport_id", namespaces=NS): d
                   for d in root.iterfind("dds:profiles/dds:transport_descriptors/dds:transport_descriptor", NS)}
    shm = [d for d in descriptors.values() if d.findtext("dds:type", namespaces=NS) == "SHM"]
    assert len(shm) == 1
    segment = int(shm[0].findtext("dds:segment_size", namespaces=NS))
    assert segment >= 10 * 1280 * 720 * 3, "the segment must hold several 1280x720 rgb8 frames"
    participants = root.findall("dds:profiles/dds:participant", NS)
    default = [p for p in participants if p.get("is_default_profile") == "true"]
    assert len(default) == 1
    used = [t.text for t in default[0].iterfind("dds:rtps/dds:userTransports/dds:transport_id", NS)]
    assert used and set(used) <= set(descriptors), "every transport the participant uses must be defined"
    assert default[0].findtext("dds:rtps/dds:useBuiltinTransports", namespaces=NS) == "false"


def _start_subscriber(env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "feature_matcher_ros.measure.dds_loss", "--role", "sub", "--timeout", "30"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert '"ready"' in line, proc.stderr.read()
    return proc


def _stop(proc):
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    return proc.returncode, out, err


@pytest.mark.parametrize("profile", ["default", "large_images"])
def test_child_process_inherits_and_loads_the_profile(profile):
    env = dds_loss.profile_env("default" if profile == "default" else str(PROFILE))
    proc = _start_subscriber(env)
    try:
        with open(f"/proc/{proc.pid}/environ", "rb") as f:
            child_env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        segments = dds_loss.shm_segments(proc.pid)
    finally:
        rc, _, err = _stop(proc)
    assert rc == 0, err
    assert "Error" not in err, err
    biggest = max(segments.values(), default=0)
    if profile == "default":
        assert b"FASTDDS_DEFAULT_PROFILES_FILE" not in child_env
        assert 0 < biggest < MIB, f"built-in transport should map a ~512 KiB segment, got {segments}"
    else:
        assert child_env[b"FASTDDS_DEFAULT_PROFILES_FILE"] == str(PROFILE.resolve()).encode()
        assert biggest >= 32 * MIB, f"the profile's 32 MiB segment is not mapped: {segments}"


def test_profile_env_rejects_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        dds_loss.profile_env(str(tmp_path / "nope.xml"))


def test_large_frames_survive_with_the_profile_and_loss_without_is_reported(capsys):
    results = [dds_loss.measure("default", 640, 480, rate=30, seconds=2, topic="/fm_test/dds_default")]
    for w, h in [(640, 480), (1280, 720)]:
        results.append(dds_loss.measure(str(PROFILE), w, h, rate=30, seconds=2, topic=f"/fm_test/dds_{w}"))
    with capsys.disabled():
        print("\n" + dds_loss.format_table(results))
    default, *with_profile = results
    assert default.sent == 60
    for r in with_profile:
        assert r.sent == 60
        assert r.received_fraction >= 0.8, dds_loss.format_table(results)
