"""The time the agent decides by: the centre's time carried forward by the boot clock, never
the box's wall clock (which anyone with a keyboard can move)."""
from __future__ import annotations

from edge.clock import TrustedClock
from services.access.rules import AccessGroup, Credential, Period, SitePolicy, TimeProfile, decide

DAY = 86_400


class Box:
    """A gate box: a wall clock someone can set, a boot clock that only moves forward, a disk."""

    def __init__(self):
        self.wall, self.boot, self.boot_id, self.disk = 1_800_000_000.0, 500.0, "boot-1", {}

    def clock(self) -> TrustedClock:
        return TrustedClock(self.disk.get, self.disk.__setitem__, wall=lambda: self.wall, boottime=lambda: self.boot,
                            boot_id=lambda: self.boot_id)

    def tick(self, seconds: float) -> None:
        self.wall += seconds
        self.boot += seconds


def test_a_wall_clock_jump_does_not_move_trusted_time():
    box = Box()
    clock = box.clock()
    clock.anchor(1_800_000_000.0)
    box.tick(60)
    box.wall += 10 * 3600                 # someone sets the box ten hours ahead
    now, trusted = clock.now()
    assert trusted and now == 1_800_000_060.0
    box.wall -= 30 * DAY                  # ... or a month back
    assert clock.now() == (1_800_000_060.0, True)


def test_a_restart_on_the_same_boot_stays_trusted_offline():
    box = Box()
    box.clock().anchor(1_800_000_000.0)
    box.tick(120)
    box.wall += 3600
    assert box.clock().now() == (1_800_000_120.0, True)


def test_after_a_reboot_without_the_centre_time_is_untrusted_and_never_goes_back():
    box = Box()
    first = box.clock()
    first.anchor(1_800_000_000.0)
    box.boot_id, box.boot = "boot-2", 5.0
    box.wall = 1_700_000_000.0            # the RTC lost a year
    now, trusted = box.clock().now()
    assert not trusted and now == 1_800_000_000.0        # not before the latest trusted time seen
    box.wall = 1_800_000_500.0
    assert box.clock().now() == (1_800_000_500.0, False)


def test_untrusted_time_does_not_open_a_schedule():
    box = Box()
    box.boot_id = "boot-2"
    clock = box.clock()
    office = TimeProfile("office", (Period(0, 8 * 60, 18 * 60),))       # Mondays 08:00-18:00
    policy = SitePolicy(timezone="UTC", groups={"g": AccessGroup("g", frozenset({"north"}), "office")},
                        profiles={"office": office})
    cleaner = Credential("c", "p", "P", "active", group_ids=frozenset({"g"}))
    box.wall = 1_799_625_600.0 + 9 * 3600     # a Monday 09:00 UTC, as the (untrusted) wall clock says
    now, trusted = clock.now()
    assert decide(cleaner, "north", now, policy, clock_trusted=trusted).reason == "clock_untrusted"
    clock.anchor(box.wall)                   # the centre confirms the time
    now, trusted = clock.now()
    assert decide(cleaner, "north", now, policy, clock_trusted=trusted).granted
