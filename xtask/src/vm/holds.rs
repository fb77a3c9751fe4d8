//! Client-mutex holds checked against what a mutex allows: one holder at a time
//! (`bufscope report --calibration`'s hold check, `bufscope_analyses::calibration::HoldCheck`).
//! A recording whose holds break it would calibrate the models with time its threads spent on
//! a runqueue before taking the mutex (6.1, voluntary preemption: `mutex_lock`'s might_sleep).

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
}

impl HoldCheck {
    pub fn impossible_share(&self) -> f64 {
        self.impossible as f64 / self.measured.max(1) as f64
    }
}

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
    let check = HoldCheck {
        measured: field("measured"),
        impossible: field("impossible"),
        worst_excess_ns: field("worst_excess_ns"),
        trusted: hold_check["trusted"].as_bool().unwrap_or(false),
    };
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
