//! `bufscope doctor`: the kernel's offer, one line per check.

use std::process::ExitCode;

use bufscope::kernel::doctor::{self, Status};

pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let report = doctor::run();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "bufscope doctor: Linux {} ({}), {} CPUs",
        report.kernel_release, report.machine, report.cpus
    );
    println!();
    for check in &report.checks {
        println!(
            "{:<9} {:<20} {}",
            format!("[{}]", check.status.label()),
            check.name,
            check.detail
        );
        if let Some(consequence) = &check.consequence {
            println!("{:<30} -> {consequence}", "");
        }
    }
    let can_record = report
        .check("lock probes attach")
        .is_some_and(|c| c.status == Status::Ok);
    println!();
    println!(
        "{}",
        if can_record {
            "bufscope can record kernel lock contention here."
        } else {
            "bufscope cannot record lock contention here yet (see above); `bufscope info` works anywhere."
        }
    );
    Ok(ExitCode::SUCCESS)
}
