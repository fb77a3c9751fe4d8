//! Client-mutex holds checked against what a mutex allows: one holder at a time
//! (`bufscope report --calibration`'s hold check, `bufscope_analyses::calibration::HoldCheck`).
//! A recording whose holds break it would calibrate the models with time its threads spent on
//! a runqueue before taking the mutex (6.1, voluntary preemption: `mutex_lock`'s might_sleep).
//!
//! And the same rule the other way (`calibration::TimelineCheck`): a thread that tried for the
//! mutex while another held it, as the probes stamped both, must have waited. A recording that
//! loses waits breaks it: with `bufscope stress`'s own waits left out as bufscope's, 37 % of the
//! 6.1 thin-hotspot attempts inside another's hold had waited; once kept, 95 % (6.1 samples of
//! 2026-11-29: 91-95 %; 6.12 bufio-hotspot 100 %).

use std::path::Path;

use anyhow::ensure;

use super::checks::bufscope_json;

/// What the hold check found in one recording.
#[derive(Clone, Copy, Debug, Default)]
pub struct HoldCheck {
    /// Operations with a measured client-mutex hold.
    pub measured: u64,
    /// Holds longer than their operation leaves room for beside the other threads' holds.
    pub impossible: u64,
    pub worst_excess_ns: u64,
    /// Few enough impossible for the report to trust the holds (at most 0.05 %; measured after
    /// the fix: 0.007 % of 355,499 on 6.1 thin-hotspot, before it 0.54 %).
    pub trusted: bool,
    /// Attempts on the mutex inside another thread's hold, by the probes' stamps (0 for a
    /// recording without them).
    pub tried_inside: u64,
    /// Of those, the ones that waited.
    pub waited: u64,
}

impl HoldCheck {
    pub fn impossible_share(&self) -> f64 {
        self.impossible as f64 / self.measured.max(1) as f64
    }

    /// The share of the attempts inside another's hold that waited (1 with none).
    pub fn waited_share(&self) -> f64 {
        if self.tried_inside == 0 {
            return 1.0;
        }
        self.waited as f64 / self.tried_inside as f64
    }
}

/// Attempts inside another's hold enough for the share that waited to say something.
const MIN_TRIED_INSIDE: u64 = 1_000;

/// The least share of them that must have waited. Both stamps are taken inside a probe, before
/// the mutex is really tried or let go, so an attempt stamped just before a release may find
/// the mutex free: with the same probes, 6.1 bufio-hotspot's share ran 82-96 % in seven CI-like
/// runs (2026-11-30: 92.0, 88.5, 85.8, 92.1, 91.6, 95.6, 81.7 %). Lost waits took it to 37 %.
const MIN_WAITED_SHARE: f64 = 0.75;

/// Fails where `report --calibration` does not trust the recording's holds (too many of them
/// impossible), if `enforced`. It is not for a no-sleep client (dm-verity's `try_verify_in_tasklet`): its
/// operations run in softirq on whatever task they interrupted, and 0.16-0.18 % of its holds
/// break the rule on 6.1 (up to 17.6 ms), with the wait for its spinlock charged to the
/// operation. Not understood yet; the share is still shown.
pub fn check_holds(
    kernel: &str,
    scenario: &str,
    bufscope: &Path,
    trace: &Path,
    enforced: bool,
) -> anyhow::Result<HoldCheck> {
    let report = bufscope_json(
        bufscope,
        &["report", "--calibration", "--json"],
        trace,
        &format!("{kernel} {scenario}: bufscope report --calibration failed"),
    )?;
    let hold_check = &report["hold_check"];
    let field = |name: &str| hold_check[name].as_u64().unwrap_or(0);
    let timeline = &report["timeline"];
    let stamped = timeline["stamped"].as_bool().unwrap_or(false);
    let timeline_field = |name: &str| {
        if stamped {
            timeline[name].as_u64().unwrap_or(0)
        } else {
            0
        }
    };
    let check = HoldCheck {
        measured: field("measured"),
        impossible: field("impossible"),
        worst_excess_ns: field("worst_excess_ns"),
        trusted: hold_check["trusted"].as_bool().unwrap_or(false),
        tried_inside: timeline_field("began_inside"),
        waited: timeline_field("waited"),
    };
    ensure!(
        !enforced || check.measured == 0 || stamped,
        "{kernel} {scenario}: {} operations held the client mutex, but not all carry the \
         probes' lock-attempt and release stamps (format 1.5 on)",
        check.measured
    );
    ensure!(
        !enforced
            || check.tried_inside < MIN_TRIED_INSIDE
            || check.waited_share() >= MIN_WAITED_SHARE,
        "{kernel} {scenario}: of {} client-mutex attempts made while another thread held the \
         mutex (by the probes' stamps), {} waited ({:.0} %, fewer than {:.0} %): waits were lost, \
         or the stamps do not say where the mutex was held",
        check.tried_inside,
        check.waited,
        check.waited_share() * 100.0,
        MIN_WAITED_SHARE * 100.0
    );
    ensure!(
        !enforced || check.trusted,
        "{kernel} {scenario}: {} of {} client-mutex holds ({:.3} %, more than report \
         --calibration trusts) are longer than their operation leaves room for beside the other \
         threads' holds inside it (worst by {:.1} us): time the thread did not hold the mutex \
         was timed as held",
        check.impossible,
        check.measured,
        check.impossible_share() * 100.0,
        check.worst_excess_ns as f64 / 1e3
    );
    Ok(check)
}
