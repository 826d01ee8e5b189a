"""Random values of random types thrown at every parameter of a running matcher_node through its real
``/<node>/set_parameters`` and ``/<node>/set_parameters_atomically`` services, alone and in batches.

A model of what must hold is kept beside the node:

* a value of the wrong ROS type, outside the spec (range, choices, not finite), for an unknown name or for
  a read-only parameter is always rejected, with a reason;
* an accepted value always passes its spec (cross-field rules may still reject a value that does);
* ``set_parameters`` applies each parameter on its own; ``set_parameters_atomically`` all or none;
* after every call, ``get_parameters`` of *every* parameter equals the model: never a mixed state.

At the end a frame pair is matched to show the node still works with the values it accepted and that
``max_matches`` as read back is the one in force.
"""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rcl_interfaces.srv import ListParameters

from feature_matcher_ros.backends import create_backend
from feature_matcher_ros.frontend import Frontend
from feature_matcher_ros.ros.client import MatcherClient
from feature_matcher_ros.ros.node import NODE_PARAMS
from feature_matcher_ros.ros.process import NodeProcess

NODE = "fm_params_hypothesis"
UNKNOWN = "no_such.parameter"
_ROS_TYPES = {bool: "bool", int: "int", float: "float", str: "str"}


def _ros_type(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (list, tuple)):
        return "array"
    return _ROS_TYPES.get(type(value), type(value).__name__)


def _specs() -> dict:
    """Every live and read-only spec of a sift node, as the node builds them."""
    frontend = Frontend(create_backend("sift", device="cpu"))
    specs = {s.name: s for s in NODE_PARAMS}
    specs.update({s.name: s for s in frontend.params()})
    return specs


SPECS = _specs()


@pytest.fixture(scope="module")
def node():
    proc = NodeProcess(NODE, {"backend": "sift", "device": "cpu", "input_qos": "reliable"})
    client = MatcherClient(node=NODE, name="fm_params_client")
    try:
        assert client.wait_for_matcher(timeout=90.0), f"node did not start:\n{proc.stderr}"
        names = _list_parameters(client)
        ours = [n for n in names if n in SPECS]
        assert set(SPECS) <= set(names), f"specs not declared on the node: {sorted(set(SPECS) - set(names))}"
        model = client.get_parameters(ours)
        yield client, proc, model
    finally:
        client.close()
        proc.close()


def _list_parameters(client) -> list[str]:
    response = client.call(ListParameters, f"/{NODE}/list_parameters", ListParameters.Request(depth=0), 10.0)
    return list(response.result.names)


def must_reject(name: str, value, current) -> str | None:
    """Why the node must refuse ``name := value`` (None: it may accept)."""
    spec = SPECS.get(name)
    if spec is None:
        return "unknown"
    if _ros_type(value) != _ros_type(spec.default):
        return "type"
    if spec.read_only:
        return "read-only" if value != current else None
    return spec.check(value)


# -- values ---------------------------------------------------------------------------------------
def _near(spec) -> st.SearchStrategy:
    """Values of the right type around the spec's limits and choices (so some are accepted)."""
    if spec.choices is not None:
        return st.one_of(st.sampled_from(spec.choices), st.text(max_size=8))
    if isinstance(spec.default, bool):
        return st.booleans()
    if isinstance(spec.default, int):
        lo = int(spec.min) if spec.min is not None else -(2**31)
        hi = int(spec.max) if spec.max is not None else 2**31
        return st.one_of(st.integers(lo - 3, lo + 50), st.integers(max(lo, hi - 50), hi + 3), st.just(spec.default))
    if isinstance(spec.default, float):
        lo = spec.min if spec.min is not None else -1e6
        hi = spec.max if spec.max is not None else 1e6
        return st.one_of(st.floats(lo - 1.0, hi + 1.0, allow_nan=False), st.just(spec.default),
                         st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0]))
    return st.text(max_size=12)


ANY_TYPE = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.lists(st.integers(-(2**31), 2**31), max_size=3),
    st.lists(st.text(max_size=4), min_size=1, max_size=3),
)


@st.composite
def change(draw):
    name = draw(st.sampled_from(sorted(SPECS) + [UNKNOWN]))
    spec = SPECS.get(name)
    value = draw(ANY_TYPE if spec is None or draw(st.integers(0, 4)) == 0 else _near(spec))
    return name, value


BATCH = st.lists(change(), min_size=1, max_size=4)


# -- the property ---------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=BATCH, atomic=st.booleans())
def test_every_change_is_whole_or_rejected_and_never_mixed(node, batch, atomic):
    client, proc, model = node
    if atomic:
        changes = dict(batch)  # one value per name in an atomic request
        result = client.set_parameters_atomically(changes)
        reasons = [r for n, v in changes.items() if (r := must_reject(n, v, model.get(n)))]
        if reasons:
            assert not result.successful, f"accepted {changes} although {reasons}"
        if result.successful:
            for n, v in changes.items():
                assert SPECS[n].check(v) is None
            model.update(changes)
        else:
            assert result.reason, f"rejected {changes} without a reason"
    else:
        results = client.set_parameters(dict(batch)) if len({n for n, _ in batch}) == len(batch) else None
        if results is None:  # the same name twice: send them one by one (the service keeps the last)
            results = [client.set_parameters({n: v})[0] for n, v in batch]
        for (n, v), result in zip(batch, results):
            why = must_reject(n, v, model.get(n))
            if why:
                assert not result.successful, f"accepted {n} := {v!r} although {why}"
            if result.successful:
                assert SPECS[n].check(v) is None
                model[n] = v
            else:
                assert result.reason, f"rejected {n} := {v!r} without a reason"
    readback = client.get_parameters(sorted(model))
    assert readback == model, {k: (readback[k], model[k]) for k in model if readback[k] != model[k]}
    assert proc.alive()


def test_node_still_matches_with_what_it_accepted(node, shared):
    """Runs after the property: the accepted values are the ones in force."""
    import cv2

    from feature_matcher_ros.camera import CameraModel

    client, proc, model = node
    # Keep whatever max_matches the property left, but no upscaling: resize_long_edge may legally be up to
    # 8192 px, and SIFT on a 12.8x upscaled 640x480 frame takes minutes on a CPU.
    keep = max(int(model["max_matches"]), 0)
    assert client.set_parameters_atomically({"max_matches": keep, "resize_long_edge": 0}).successful
    folder = shared / "data" / "tum_fr2_desk"
    lines = [ln.split() for ln in (folder / "images.txt").read_text().splitlines() if ln and ln[0] != "#"]
    camera = CameraModel.from_yaml(folder / "intrinsics.yaml")
    assert client.reset().success
    for i, (_, rel) in enumerate(lines[:2]):
        rgb = cv2.cvtColor(cv2.imread(str(folder / rel)), cv2.COLOR_BGR2RGB)
        for attempt in range(3):  # a first message can be lost while discovery settles: resend
            stamp = (5000 + i) * 1_000_000_000 + attempt * 10_000_000
            client.send(rgb, "rgb8", stamp, camera, "cam")
            cloud = client.wait_result(stamp, timeout=15.0)
            if cloud is not None:
                break
        assert cloud is not None, (f"frame not answered with the accepted values {model}; diagnostics "
                                   f"{client.latest_diagnostics(timeout=3.0)}; node log:\n{proc.stderr[-2000:]}")
    if keep > 0:
        assert cloud.width * cloud.height <= keep
    assert proc.alive()
