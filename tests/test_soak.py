"""The soak's short version: two minutes of real speech into one session, faster than real time.

The long run (``scripts/soak.py --minutes 30``) is a command; this one checks the
same properties in CI: every utterance answered, nothing leaked, no slowdown
with session age (bounds only catch gross regressions).
"""

import pytest

from scripts.soak import run_soak
from tests.helpers import background_server

pytestmark = pytest.mark.slow


async def test_two_minute_soak_stays_flat():
    with background_server() as handle:
        report = await run_soak(handle.url, handle.server, minutes=2.0, speed=3.0)
    print("soak:", report)
    first, last = report["first_window"], report["last_window"]
    assert report["close_code"] == 1000 and not report["errors"]
    assert report["finals_with_text"] >= report["utterances_expected"]
    assert report["wer"] <= 0.15
    # Memory: no growth with session age beyond noise.
    assert last["rss_mb_median"] - first["rss_mb_median"] < 50
    # Latency: the session's last minutes are not grossly slower than its first.
    assert last["final_latency_p50_s"] <= 3 * first["final_latency_p50_s"] + 2.0
