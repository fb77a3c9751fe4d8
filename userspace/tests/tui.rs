//! The full-screen view driven as a person would: the real binary in tmux, keys sent with
//! `send-keys`, the screen read with `capture-pane`. Live under the pipe contention workload
//! (root), and `replay --tui` on a bundled sample (no root).

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::Command,
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use common::{PipeContention, root_or_skip, skip};

/// How long the live view under the pipe storm may take to answer a key. The debug build's
/// view answered in 0.02-0.9 s on this machine (2026-11-30), once the designs' windows were
/// prepared off the view's loop and late ticks stopped starving the event stream; before, it
/// took 1.5-5 s, and once more than 10 s in a CI-like run.
const KEY_RESPONSE: Duration = Duration::from_secs(10);

/// The two views run one at a time: each drives a busy process (the pipe workload and its
/// probes; a replay with its designs' threads) that would slow the other's screen on two CPUs.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A tmux server of its own (a private socket) running one command; killed when dropped.
struct Tmux {
    session: String,
}

fn tmux(session: &str) -> Command {
    let mut c = Command::new("tmux");
    c.args(["-L", session]);
    c
}

impl Tmux {
    /// Starts `command` in a detached session of `width`×`height`; `None` (after [`skip`]) when
    /// tmux is missing.
    fn start(test: &str, command: &str, width: u16, height: u16) -> Option<Self> {
        if Command::new("tmux").arg("-V").output().is_err() {
            skip(
                test,
                "tmux is not installed (`cargo xtask setup` installs it)",
            );
            return None;
        }
        let session = format!("bufscope-test-{}-{test}", std::process::id());
        let status = tmux(&session)
            .args(["new-session", "-d", "-s", &session, "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg(command)
            .env_remove("TMUX")
            // The tmux server outlives this call: it must not hold the test's output pipes
            // (cargo waits for them to close).
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("running tmux");
        assert!(status.success(), "tmux new-session failed");
        Some(Self { session })
    }

    fn capture(&self) -> String {
        let out = tmux(&self.session)
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for key in keys {
            let status = tmux(&self.session)
                .args(["send-keys", "-t", &self.session, key])
                .status()
                .expect("tmux send-keys");
            assert!(status.success());
            thread::sleep(Duration::from_millis(150));
        }
    }

    fn display(&self, format: &str) -> String {
        let out = tmux(&self.session)
            .args(["display-message", "-p", "-t", &self.session, format])
            .output()
            .expect("tmux display-message");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until the screen satisfies `ok`; panics with the last screen after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        let deadline = start + timeout;
        loop {
            let screen = self.capture();
            if ok(&screen) {
                // Shown with the output of a failing test: how long each step took.
                eprintln!("{}: {what} after {:.1?}", self.session, start.elapsed());
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what}; the screen:\n{screen}\n{}{}",
                self.processes(),
                runnable()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Tmux {
    /// What the pane's processes are doing, for a failure message: each thread's state, where
    /// it sleeps in the kernel and (as root) its kernel stack. A busy machine shows runnable
    /// threads; a hang shows where.
    fn processes(&self) -> String {
        let Ok(shell) = self.display("#{pane_pid}").parse::<u32>() else {
            return "the pane has no process".to_string();
        };
        let mut out = String::new();
        let mut pids = vec![shell];
        let mut i = 0;
        while i < pids.len() {
            pids.extend(children(pids[i]));
            i += 1;
        }
        for pid in pids {
            let read = |path: String| std::fs::read_to_string(path).unwrap_or_default();
            let cmdline = read(format!("/proc/{pid}/cmdline")).replace('\0', " ");
            out += &format!("process {pid}: {}\n", cmdline.trim());
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let dir = task.path();
                let stat = read(format!("{}/stat", dir.display()));
                // After the parenthesised comm: the state, then (fields 14 and 15 of the line)
                // the CPU time in user and kernel mode, in clock ticks: a thread that spun shows
                // seconds, a starved one almost none.
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map(|(_, rest)| rest.split_whitespace().collect())
                    .unwrap_or_default();
                let field = |i: usize| fields.get(i).copied().unwrap_or("?");
                out += &format!(
                    "  thread {} {} state {} utime {} stime {} (ticks) wchan {}\n",
                    task.file_name().to_string_lossy(),
                    read(format!("{}/comm", dir.display())).trim(),
                    field(0),
                    field(11),
                    field(12),
                    read(format!("{}/wchan", dir.display())).trim(),
                );
                for frame in read(format!("{}/stack", dir.display())).lines().take(12) {
                    out += &format!("    {frame}\n");
                }
            }
            if cmdline.contains("bufscope") && !cmdline.starts_with("bash") {
                out += &user_stacks(pid);
            }
        }
        out
    }
}

/// Where bufscope's main thread is in its own code, from gdb (on this kind of machine; a
/// note without it): the kernel stacks say a thread runs, this says what it runs.
fn user_stacks(pid: u32) -> String {
    let out = Command::new("timeout")
        .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
        // The main thread (gdb's thread 1) runs the screen's event loop.
        .args([
            "-ex",
            "set pagination off",
            "-ex",
            "thread 1",
            "-ex",
            "bt 40",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            let frames: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with('#'))
                .map(|l| l.chars().take(200).collect())
                .collect();
            format!("gdb, process {pid}, main thread:\n{}\n", frames.join("\n"))
        }
        Err(e) => format!("no user stacks for {pid} (gdb: {e})\n"),
    }
}

/// Every thread on the machine that is running or waiting for a CPU, and the load: whether
/// something else (a process an earlier test left behind, say) took the CPUs.
fn runnable() -> String {
    let mut out = format!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
    );
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            if rest.split_whitespace().next() == Some("R") {
                let comm = head.split_once('(').map_or("?", |(_, c)| c);
                out += &format!(
                    "runnable: pid {pid} tid {} {comm}\n",
                    task.file_name().to_string_lossy()
                );
            }
        }
    }
    out
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.split_whitespace().nth(1)?.to_string();
                    rest.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = tmux(&self.session).arg("kill-server").status();
    }
}

/// The command tmux runs: bufscope, then its exit status and whether the terminal is back in
/// canonical mode (raw mode turns icanon off), then a pause so the pane stays readable: the
/// pane's own process (`exec`), so killing the tmux server ends it and the test does not wait on it.
fn shell(args: &str) -> String {
    format!(
        "{} {args}; echo \"bufscope exited $?\"; stty -a | grep -o -w -- '-\\?icanon'; exec sleep 30",
        env!("CARGO_BIN_EXE_bufscope")
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The metrics in OpenMetrics, asked for as Prometheus asks.
fn get_metrics(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to --metrics");
    stream
        .write_all(
            b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\
              Accept: application/openmetrics-text;version=1.0.0\r\n\r\n",
        )
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The playback position in the header ("▶ 4x 3.2/12.4 s"), seconds.
fn position(screen: &str) -> f64 {
    read_position(screen)
        .unwrap_or_else(|| panic!("no play state, speed and position in the header: {screen}"))
}

/// The replay position in the header, if the header shows one ("▶ 0.5x 1.2/6.6 s").
fn read_position(screen: &str) -> Option<f64> {
    let header = screen.lines().next()?;
    let rest = &header[header.find(['▶', '⏸'])?..];
    let from = rest.find("x ")? + 2;
    let to = rest.find('/')?;
    rest.get(from..to)?.parse().ok()
}

/// Quits with q and checks the terminal came back: the alternate screen left, canonical mode on.
fn quit_and_check_terminal(tmux: &Tmux) {
    tmux.keys(&["q"]);
    let screen = tmux.wait_for("bufscope to exit", Duration::from_secs(30), |s| {
        s.contains("bufscope exited") && s.contains("icanon")
    });
    assert!(screen.contains("bufscope exited 0"), "{screen}");
    assert!(
        screen.lines().any(|l| l.trim() == "icanon"),
        "the terminal is still in raw mode: {screen}"
    );
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "0",
        "still on the alternate screen"
    );
}

/// The pipe storm's eight writers, and the live view over them in tmux, refreshing every
/// 500 ms and serving metrics on the port returned, with `options` besides; `None` (the
/// workload stopped) when tmux is missing.
fn live_on_the_pipe_storm(session: &str, options: &str) -> Option<(PipeContention, Tmux, u16)> {
    let workload = PipeContention::start(8);
    let port = free_port();
    let command = format!("live --interval 500 --metrics {port} {options}");
    let Some(tmux) = Tmux::start(session, &shell(command.trim_end()), 100, 30) else {
        workload.stop();
        return None;
    };
    Some((workload, tmux, port))
}

#[test]
fn live_tui_shows_the_pipe_workload_and_serves_metrics() {
    let test = "live_tui_shows_the_pipe_workload_and_serves_metrics";
    let _alone = one_at_a_time();
    if !root_or_skip(test) {
        return;
    }
    let Some((workload, tmux, port)) = live_on_the_pipe_storm("live", "") else {
        return;
    };
    // The header, then the lock table filtered to mutexes (f, by type and address: on Linux
    // 6.13+ the pipe's mutex is named after its slab cache): other contention, including the
    // futex spinlocks of the designs' own replay threads, can fill the unfiltered screen. The
    // pipe's mutex shows with waits and a caller from its stacks (the detail under the table is
    // the selected row's; sorted by total wait, the busiest mutex is the workload's).
    tmux.wait_for("the header", Duration::from_secs(60), |s| {
        s.contains("bufscope live ·")
    });
    tmux.keys(&["f", "mutex 0x", "Enter"]);
    let screen = tmux.wait_for(
        "the header and a mutex row with waits",
        Duration::from_secs(60),
        |s| {
            s.contains("bufscope live")
                && s.contains("tp_btf")
                && s.lines().any(|l| l.contains(" mutex "))
                && s.contains("caller ")
        },
    );
    assert!(screen.contains(" 1 Locks "), "{screen}");
    let has_dm_bufio = std::fs::read_to_string("/proc/kallsyms")
        .unwrap()
        .contains(" dm_bufio_get");
    if !has_dm_bufio {
        assert!(screen.contains("no dm-bufio here"), "{screen}");
    }
    // A mutex row says how many waits per second and how long in all: not zero.
    let row = screen.lines().find(|l| l.contains(" mutex ")).unwrap();
    assert!(!row.contains(" 0 ns "), "{row}");
    // The detail names the cgroup the waiters ran in: this process's.
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .unwrap()
        .lines()
        .find_map(|l| Some(l.strip_prefix("0::")?.to_string()))
        .expect("a cgroup v2 path for this process");
    tmux.wait_for("the waiters' cgroup", Duration::from_secs(30), |s| {
        s.contains(&format!("cgroup {cgroup} "))
    });

    // Enter opens the selected lock's stacks; the pipe functions are in them.
    tmux.keys(&["g", "Enter"]);
    let stacks = tmux.wait_for("the stacks overlay", KEY_RESPONSE, |s| {
        s.contains("Stacks of")
    });
    assert!(stacks.contains("waits,"), "{stacks}");
    tmux.keys(&["Escape"]);
    tmux.wait_for("the stacks overlay to close", KEY_RESPONSE, |s| {
        !s.contains("Stacks of")
    });
    // Tab and digits switch panels.
    tmux.keys(&["Tab"]);
    tmux.wait_for("the clients panel", KEY_RESPONSE, |s| {
        s.contains("dm-bufio clients")
    });
    tmux.keys(&["3"]);
    tmux.wait_for(
        "the comparison panel replaying the sample or the kernel's ops",
        Duration::from_secs(60),
        |s| s.contains("Kernel vs designs") && (s.contains("classic ") || s.contains("Waiting")),
    );
    tmux.keys(&["4"]);
    tmux.wait_for("the charts", KEY_RESPONSE, |s| {
        s.contains("kernel, per second")
    });
    tmux.keys(&["?"]);
    tmux.wait_for("the help", KEY_RESPONSE, |s| s.contains("any key closes"));
    tmux.keys(&["x"]);
    tmux.wait_for("the help to close", KEY_RESPONSE, |s| {
        !s.contains("any key closes")
    });

    let metrics = get_metrics(port);
    assert!(metrics.starts_with("HTTP/1."), "{metrics}");
    assert!(
        metrics.contains("application/openmetrics-text"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(
            |l| l.starts_with("bufscope_lock_wait_seconds_bucket{lock=\"")
                && l.contains(",type=\"mutex\"")
        ),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");

    quit_and_check_terminal(&tmux);
    workload.stop();
}

/// The value of the metrics sample `name` (labels included), or the sum over every sample that
/// starts with `name` and contains `with`.
fn metric_sum(metrics: &str, name: &str, with: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(with))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}

/// Under a flood its event ring cannot carry (the pipe storm's mutex waits, a 64 KiB ring), the
/// view loses most events on the way, says how many, and still counts every wait: the lock
/// table's counts come from the kernel's histograms. Compared in one snapshot of the metrics
/// (one interval's): the mutex waits counted against the waits that arrived plus those lost,
/// within 10 %. Counting only what arrived fails it by the losses; counting a wait twice, by
/// the rest.
#[test]
fn live_tui_counts_the_waits_its_event_stream_loses() {
    let test = "live_tui_counts_the_waits_its_event_stream_loses";
    let _alone = one_at_a_time();
    if !root_or_skip(test) {
        return;
    }
    let Some((workload, tmux, port)) =
        live_on_the_pipe_storm("lossy", "--type mutex --ringbuf-size 65536")
    else {
        return;
    };
    tmux.wait_for("the header", Duration::from_secs(60), |s| {
        s.contains("bufscope live ·")
    });
    // Until the losses are many: the first intervals may have read all there was.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (counted, arrived, lost, metrics) = loop {
        let metrics = get_metrics(port);
        let counted = metric_sum(
            &metrics,
            "bufscope_lock_wait_seconds_count{",
            "type=\"mutex\"",
        );
        let arrived = metric_sum(&metrics, "bufscope_events_total{kind=\"lock_wait\"}", "");
        let lost = metric_sum(&metrics, "bufscope_events_lost_total ", "");
        if lost >= 100_000 && arrived >= 10_000 {
            break (counted, arrived, lost, metrics);
        }
        assert!(
            Instant::now() < deadline,
            "after a minute of the pipe storm, the view read {arrived} waits and lost only {lost} \
             events through a 64 KiB ring: it cannot show that losses are counted\n{metrics}"
        );
        thread::sleep(Duration::from_millis(200));
    };
    let streamed_and_lost = (arrived + lost) as f64;
    assert!(
        counted as f64 >= 0.9 * streamed_and_lost && counted as f64 <= 1.1 * streamed_and_lost,
        "the mutex rows count {counted} waits; {arrived} arrived and {lost} were lost\n{metrics}"
    );
    eprintln!("{test}: {counted} waits counted, {arrived} arrived, {lost} lost");
    quit_and_check_terminal(&tmux);
    workload.stop();
}

/// The lock waits of a recording, with its thread ids and process ids.
fn recorded_waits(path: &Path) -> Vec<bufscope_trace::LockWait> {
    let mut reader = bufscope_trace::TraceReader::open(path).unwrap_or_else(|e| panic!("{e}"));
    let mut waits = Vec::new();
    while let Some(record) = reader.next_record().unwrap_or_else(|e| panic!("{e}")) {
        if let bufscope_trace::Record::LockWaits(w) = record {
            waits.extend(w);
        }
    }
    waits
}

#[test]
fn live_tui_watches_a_command_and_ends_with_it() {
    let test = "live_tui_watches_a_command_and_ends_with_it";
    let _alone = one_at_a_time();
    if !root_or_skip(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("stress.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(64 << 20))
        .unwrap();
    let recording = dir.path().join("cmd.bftrace");
    let pid_file = dir.path().join("pid");
    // This process contends too, and --only-cmd must leave it out: the view and its recording
    // hold only the command's waits (direct I/O writes contending on the scratch file's locks),
    // and of those, with --lock and --stack, only its rwsem waits on its write path.
    let workload = PipeContention::start(4);
    let command = format!(
        "live --interval 500 --design classic --record {} --lock rwsem --stack write_iter \
         --only-cmd -- sh -c 'echo $$ > {}; \
         exec {} stress {} --threads 2 --writers 2 --allow-writes --duration 4s'",
        recording.display(),
        pid_file.display(),
        env!("CARGO_BIN_EXE_bufscope"),
        img.display()
    );
    let Some(tmux) = Tmux::start("command", &shell(&command), 100, 30) else {
        workload.stop();
        return;
    };
    // No key: the view ends with the command, with its status, the terminal restored.
    let screen = tmux.wait_for("bufscope to exit", Duration::from_secs(90), |s| {
        s.contains("bufscope exited") && s.contains("icanon")
    });
    workload.stop();
    assert!(screen.contains("bufscope exited 0"), "{screen}");
    assert!(
        screen.contains("the command ended (exit status: 0)"),
        "{screen}"
    );
    assert!(screen.lines().any(|l| l.trim() == "icanon"), "{screen}");
    // The command's shell wrote its pid, which it kept as it became bufscope stress.
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("the command ran")
        .trim()
        .parse()
        .unwrap();
    let waits = recorded_waits(&recording);
    let of_command = waits.iter().filter(|w| w.tgid == pid).count();
    assert!(of_command >= 100, "{of_command} waits of the command");
    assert_eq!(
        waits.len() - of_command,
        0,
        "waits of other processes (this one's pipe writers among them)"
    );
    let report = Command::new(env!("CARGO_BIN_EXE_bufscope"))
        .args([
            "report",
            "--json",
            "--lock",
            "rwsem",
            "--stack",
            "write_iter",
        ])
        .arg(&recording)
        .output()
        .unwrap();
    assert!(report.status.success(), "{report:?}");
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        report["kept"], report["waits"],
        "waits recorded that --lock rwsem --stack write_iter do not match"
    );
}

#[test]
fn replay_tui_plays_pauses_speeds_up_and_compares_a_sample() {
    let _alone = one_at_a_time();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/6.1-thin-hotspot.bftrace");
    // A quarter speed: the 6.6 s recording lasts 26 s, time for every key below.
    let Some(tmux) = Tmux::start(
        "replay",
        &shell(&format!(
            "replay {} --tui --speed 0.25 --design classic --design sharded",
            sample.display()
        )),
        80,
        24,
    ) else {
        return;
    };
    let screen = tmux.wait_for("the sample's client mutex", Duration::from_secs(60), |s| {
        s.contains("dm-bufio 7:0 client mutex")
    });
    assert!(
        screen.contains("· replay 6.1-thin-hotspot.bftrace"),
        "{screen}"
    );
    assert!(screen.contains("▶ 0.25x"), "{screen}");
    tmux.keys(&["p"]);
    tmux.wait_for("pause", Duration::from_secs(10), |s| s.contains("⏸ 0.25x"));
    tmux.keys(&["+", "p"]);
    tmux.wait_for("half speed, playing", Duration::from_secs(10), |s| {
        s.contains("▶ 0.5x")
    });
    tmux.keys(&["3"]);
    let compare = tmux.wait_for("a window compared", Duration::from_secs(90), |s| {
        s.contains(" windows ·") && s.contains("sharded ")
    });
    assert!(compare.contains("kernel "), "{compare}");
    assert!(compare.contains("classic "), "{compare}");
    // Paused, seeking back 20 s lands at the start.
    tmux.keys(&["p"]);
    let before = position(&tmux.wait_for("pause", Duration::from_secs(10), |s| s.contains("⏸")));
    tmux.keys(&["Left", "Left"]);
    // The screen shows the seek once bufscope has read both keys: wait for the start, then check
    // the position did not move forward (paused) on the way.
    let after = position(
        &tmux.wait_for("the seek to the start", Duration::from_secs(10), |s| {
            read_position(s).is_some_and(|at| at < 0.1)
        }),
    );
    assert!(after <= before, "{before} s → {after} s");
    quit_and_check_terminal(&tmux);
}
