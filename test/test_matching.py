"""Prompt-to-frame matching rules and the encode policies, table-driven (pure functions)."""

from __future__ import annotations

import pytest

from ovsam_ros.engine import EncodeMode, EncodePolicy, MatchAction, RejectReason, match_stamp

USE, WAIT, REJECT = MatchAction.USE, MatchAction.WAIT, MatchAction.REJECT
SLOP, AGE = 0.05, 1.0

# (case, prompt stamp, encoded stamps, raw stamps, wait expired) -> (action, stamp, encoded, exact, reason)
CASES = [
    ("exact encoded frame", 10.0, [9.9, 10.0], [], False, (USE, 10.0, True, True, None)),
    ("nearest within slop", 10.03, [9.9, 10.0], [10.1], False, (USE, 10.0, True, True, None)),
    ("nearest may be a raw frame", 10.08, [10.0], [10.1], False, (USE, 10.1, False, True, None)),
    ("tie prefers the encoded frame", 10.05, [10.0], [10.1], False, (USE, 10.0, True, True, None)),
    ("float noise at the slop edge", 10.05, [10.0], [], False, (USE, 10.0, True, True, None)),
    ("stamp zero is the newest (raw)", 0.0, [9.0], [9.5], False, (USE, 9.5, False, True, None)),
    ("stamp zero is the newest (encoded)", 0.0, [9.0, 9.5], [8.0], False, (USE, 9.5, True, True, None)),
    ("no frame yet: wait", 0.0, [], [], False, (WAIT, None, False, True, None)),
    ("no frame after the wait", 5.0, [], [], True, (REJECT, None, False, True, RejectReason.NO_FRAME)),
    ("newer than the newest: wait", 10.2, [10.0], [], False, (WAIT, None, False, True, None)),
    ("newer, wait over, within age", 10.2, [10.0], [], True, (USE, 10.0, True, False, None)),
    ("newer, wait over, beyond age", 11.5, [10.0], [], True,
     (REJECT, None, False, True, RejectReason.TOO_NEW)),
    ("older than all kept, within age", 9.5, [9.8, 10.0], [], False, (USE, 9.8, True, False, None)),
    ("older than all kept, beyond age", 8.5, [9.8, 10.0], [], False,
     (REJECT, None, False, True, RejectReason.TOO_OLD)),
    ("age counts from the newest raw frame", 8.5, [9.0], [10.0], False,
     (REJECT, None, False, True, RejectReason.TOO_OLD)),
    ("between frames beyond slop: nearest", 10.3, [10.0, 10.5], [], False, (USE, 10.5, True, False, None)),
    ("old prompt never waits", 9.0, [9.5], [], False, (USE, 9.5, True, False, None)),
]


@pytest.mark.parametrize(("stamp", "encoded", "raw", "expired", "want"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_match_rules(stamp, encoded, raw, expired, want):
    match = match_stamp(stamp, encoded, raw, slop=SLOP, max_age=AGE, wait_expired=expired)
    assert (match.action, match.stamp, match.encoded, match.exact, match.reason) == want


# (mode, raw stamps, newest encoded, standing, now, last encode, max rate) -> (stamp, retry_in_s)
POLICY_CASES = [
    ("on demand never encodes by itself", EncodeMode.ON_DEMAND, [1.0, 2.0], None, True, 10.0, None, 5.0,
     (None, None)),
    ("continuous takes the newest raw frame", EncodeMode.CONTINUOUS, [1.0, 2.0, 3.0], 0.5, False, 10.0, None,
     5.0, (3.0, None)),
    ("continuous never goes back in time", EncodeMode.CONTINUOUS, [1.0, 2.0], 2.5, False, 10.0, None, 5.0,
     (None, None)),
    ("continuous waits for the rate cap", EncodeMode.CONTINUOUS, [3.0], 2.0, False, 10.05, 10.0, 5.0,
     (None, 0.15)),
    ("rate cap passed", EncodeMode.CONTINUOUS, [3.0], 2.0, False, 10.2, 10.0, 5.0, (3.0, None)),
    ("rate 0 means no cap", EncodeMode.CONTINUOUS, [3.0], 2.0, False, 10.0, 10.0, 0.0, (3.0, None)),
    ("nothing to encode", EncodeMode.CONTINUOUS, [], 2.0, False, 10.0, None, 5.0, (None, None)),
    ("auto without standing prompts", EncodeMode.AUTO, [3.0], None, False, 10.0, None, 5.0, (None, None)),
    ("auto with standing prompts", EncodeMode.AUTO, [3.0], None, True, 10.0, None, 5.0, (3.0, None)),
]


@pytest.mark.parametrize(("mode", "raw", "newest", "standing", "now", "last", "rate", "want"),
                         [c[1:] for c in POLICY_CASES], ids=[c[0] for c in POLICY_CASES])
def test_encode_policy(mode, raw, newest, standing, now, last, rate, want):
    decision = EncodePolicy(mode, rate).choose(raw, newest, standing, now, last)
    assert decision.stamp == want[0]
    if want[1] is None:
        assert decision.retry_in_s is None
    else:
        assert decision.retry_in_s == pytest.approx(want[1])
