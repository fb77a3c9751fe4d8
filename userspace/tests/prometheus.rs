//! `live --metrics` under a real Prometheus (Debian's, which `cargo xtask setup` installs; root):
//! promtool lints the served text, a Prometheus of the test's own scrapes it under the pipe
//! contention workload and answers `histogram_quantile` over the lock waits, and every query of
//! the Grafana dashboard in contrib/grafana runs there and names only metrics bufscope serves.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use common::{PipeContention, bufscope, root_or_skip, skip};
use serde_json::Value;

/// Prometheus's scrape interval; bufscope publishes new figures every second too.
const SCRAPE_INTERVAL: &str = "1s";

/// What the dashboard's Grafana variables stand for when its queries run here: the interval
/// variables a duration covering the test's scrapes, the label variables "all".
const GRAFANA_INTERVALS: &[(&str, &str)] = &[
    ("$__rate_interval", "1m"),
    ("$__interval", "1m"),
    ("$__range", "5m"),
];

/// A process of the test's, ended (SIGTERM, then SIGKILL after 15 s) and reaped when dropped,
/// however the test ends.
struct Running {
    what: &'static str,
    child: Child,
}

impl Running {
    fn start(what: &'static str, command: &mut Command) -> Self {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        Self { what, child }
    }

    /// Fails the test if the process has already exited.
    fn assert_running(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}): {}",
                self.what,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill with our own child's pid, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} ignored SIGTERM for 15 s: killing it", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pipe workload, stopped when dropped.
struct Workload(Option<PipeContention>);

impl Drop for Workload {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            w.stop();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET on loopback: the status code and the body.
fn http_get(port: u16, target: &str, accept: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// bufscope's metrics as curl and promtool get them: Prometheus's classic text format.
fn served_text(port: u16) -> Result<String, String> {
    match http_get(port, "/metrics", "*/*") {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => Err(format!("HTTP {status}: {body}")),
        Err(e) => Err(e.to_string()),
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Calls `observe` every 200 ms until it gives a value; panics with its last answer after
/// `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut observe: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match observe() {
            Ok(value) => {
                eprintln!("{what}: after {:.1?}", start.elapsed());
                return value;
            }
            Err(last) if start.elapsed() > timeout => {
                panic!("waited {timeout:?} for {what}; last: {last}")
            }
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A Prometheus of the test's own: loopback, a free port, its storage in a temporary directory.
struct Prometheus {
    port: u16,
    log: std::path::PathBuf,
    process: Running,
}

impl Prometheus {
    fn start(dir: &Path, target_port: u16) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  scrape_timeout: {SCRAPE_INTERVAL}\n\
                 scrape_configs:\n  - job_name: bufscope\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let output = std::fs::File::create(&log).unwrap();
        let process = Running::start(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(output.try_clone().unwrap())
                .stderr(output),
        );
        let mut prometheus = Self { port, log, process };
        wait_for("Prometheus to be ready", Duration::from_secs(60), || {
            prometheus.process.assert_running(&prometheus.log);
            match http_get(port, "/-/ready", "*/*") {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        prometheus
    }

    /// The HTTP API's whole answer to an instant query at this moment.
    fn query(&self, expr: &str) -> Value {
        let (status, body) = http_get(
            self.port,
            &format!("/api/v1/query?query={}", percent_encode(expr)),
            "application/json",
        )
        .unwrap_or_else(|e| panic!("querying Prometheus for {expr}: {e}"));
        serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!("Prometheus answered {expr} with HTTP {status}, {e}: {body}")
        })
    }

    /// An instant vector's samples, by their labels; Err with the answer when the query failed.
    fn vector(&self, expr: &str) -> Result<Vec<(Value, f64)>, String> {
        let answer = self.query(expr);
        if answer["status"] != "success" || answer["data"]["resultType"] != "vector" {
            return Err(answer.to_string());
        }
        Ok(answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["metric"].clone(), number(&s["value"][1])))
            .collect())
    }

    /// A range selector's raw samples (each series' values in time order), by series.
    fn samples(&self, selector: &str) -> Vec<(Value, Vec<f64>)> {
        let answer = self.query(selector);
        assert_eq!(answer["status"], "success", "{selector}: {answer}");
        assert_eq!(answer["data"]["resultType"], "matrix", "{selector}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let values = s["values"].as_array().unwrap();
                (
                    s["metric"].clone(),
                    values.iter().map(|v| number(&v[1])).collect(),
                )
            })
            .collect()
    }
}

/// Prometheus gives sample values as strings ("0.25", "NaN", "+Inf").
fn number(value: &Value) -> f64 {
    value.as_str().unwrap().parse().unwrap()
}

/// Every sample name bufscope declares in its classic-format text, with its family's type:
/// a histogram's `_bucket`, `_sum` and `_count`, a counter's and a gauge's own name.
fn declared_samples(text: &str) -> BTreeMap<String, String> {
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        let names: Vec<String> = match kind {
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect(),
            _ => vec![name.to_string()],
        };
        for n in names {
            samples.insert(n, name.to_string());
        }
    }
    samples
}

/// The sample names the text has at least one sample of.
fn names_with_samples(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l[..l.find(['{', ' ']).unwrap()].to_string())
        .collect()
}

/// A sample's value in classic-format text, by its name and labels as written.
fn served_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The metric names a PromQL expression selects: identifiers that are not functions, aggregation
/// operators or keywords, outside strings, label matchers, ranges and grouping label lists.
fn metric_names(expr: &str) -> Vec<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &["offset", "bool", "and", "or", "unless", "inf", "nan"];
    let chars: Vec<char> = expr.chars().collect();
    let skip_past = |from: usize, close: char| -> usize {
        let mut i = from + 1;
        let mut quote = None;
        while i < chars.len() {
            match (quote, chars[i]) {
                (Some(_), '\\') => i += 1,
                (Some(q), c) if c == q => quote = None,
                (None, c @ ('"' | '\'' | '`')) => quote = Some(c),
                (None, c) if c == close => return i + 1,
                _ => {}
            }
            i += 1;
        }
        i
    };
    let word_at = |from: usize| -> (String, usize) {
        let mut end = from;
        while end < chars.len() && (chars[end].is_ascii_alphanumeric() || "_:".contains(chars[end]))
        {
            end += 1;
        }
        (chars[from..end].iter().collect(), end)
    };
    let next_token = |from: usize| -> usize {
        let mut i = from;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_past(i, c);
        } else if c == '{' {
            i = skip_past(i, '}');
        } else if c == '[' {
            i = skip_past(i, ']');
        } else if c.is_ascii_digit() {
            // A number (0.99, 1e-3) or a duration (5m): never a name.
            let (_, end) = word_at(i);
            i = end;
            if i < chars.len() && "+-".contains(chars[i]) && chars[i - 1] == 'e' {
                i = word_at(i + 1).1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let (word, end) = word_at(i);
            let after = next_token(end);
            let lower = word.to_ascii_lowercase();
            i = end;
            if GROUPING.contains(&lower.as_str()) {
                let open = next_token(end);
                if chars.get(open) == Some(&'(') {
                    i = skip_past(open, ')');
                }
            } else if KEYWORDS.contains(&lower.as_str()) || chars.get(after) == Some(&'(') {
                // a keyword, or a function or aggregation called with its argument list
            } else if GROUPING[..2].contains(&word_at(after).0.as_str()) {
                // an aggregation followed by its grouping: `sum by (le) (...)`
            } else {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The dashboard's queries: (panel title, expression), from every panel, rows' panels included.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push((
                    panel["title"].as_str().unwrap_or("?").to_string(),
                    target["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("a target without expr: {target}"))
                        .to_string(),
                ));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The expression with Grafana's variables replaced: intervals by durations, the dashboard's own
/// variables (label filters) by "any value".
fn as_promql(expr: &str, variables: &[String]) -> String {
    let mut query = expr.to_string();
    for (variable, value) in GRAFANA_INTERVALS {
        query = query.replace(variable, value);
    }
    for v in variables {
        query = query
            .replace(&format!("${{{v}}}"), ".*")
            .replace(&format!("${v}"), ".*");
    }
    assert!(
        !query.contains('$'),
        "{expr}: a variable the dashboard does not define"
    );
    query
}

/// Reads the served counter of lock waits every 100 ms, so each value bufscope published (one
/// a second) is known when Prometheus's samples are checked against them.
struct ServedCounter {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<u64>>>,
    thread: Option<JoinHandle<()>>,
}

impl ServedCounter {
    fn start(port: u16, series: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let thread = {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(v) = served_text(port)
                        .ok()
                        .and_then(|t| served_value(&t, series))
                    {
                        seen.lock().unwrap().insert(v as u64);
                    }
                    thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Self {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn values(&self) -> BTreeSet<u64> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ServedCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether Debian's `prometheus` and `promtool` are installed; skips (saying why) when not.
fn prometheus_or_skip(test: &str) -> bool {
    for tool in ["prometheus", "promtool"] {
        let runs = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !runs {
            skip(
                test,
                &format!("`{tool}` is missing; `cargo xtask setup` installs Debian's prometheus"),
            );
            return false;
        }
    }
    true
}

#[test]
fn metric_names_are_the_selectors_of_an_expression() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le, lock) (rate(bufscope_lock_wait_seconds_bucket\
             {instance=~\".*\",lock!=\"a{b}\"}[1m])))"
        ),
        ["bufscope_lock_wait_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            "sum(rate(x_total{result=\"hit\"}[5m] offset 1m)) by (device) / ignoring(result) \
             sum without (result) (y_total) * 1e-3 > bool 2"
        ),
        ["x_total", "y_total"]
    );
    assert_eq!(
        metric_names("bufscope_probe_cpu_ratio and on(instance) up"),
        ["bufscope_probe_cpu_ratio", "up"]
    );
}

#[test]
fn prometheus_scrapes_live_metrics_and_runs_every_dashboard_query() {
    let test = "prometheus_scrapes_live_metrics_and_runs_every_dashboard_query";
    if !root_or_skip(test) || !prometheus_or_skip(test) {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let _workload = Workload(Some(PipeContention::start(8)));
    let metrics_port = free_port();
    let live_log = dir.path().join("live.log");
    let mut live = Running::start(
        "bufscope live --no-tui --metrics",
        bufscope()
            .args(["live", "--no-tui", "--interval", "1000", "--metrics"])
            .arg(format!("127.0.0.1:{metrics_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&live_log).unwrap()),
    );

    // bufscope serves the pipe's mutex: the mutex with the most waits.
    let (served, pipe_lock) = wait_for(
        "bufscope to serve the pipe's mutex waits",
        Duration::from_secs(60),
        || {
            live.assert_running(&live_log);
            let text = served_text(metrics_port)?;
            let busiest = text
                .lines()
                .filter(|l| {
                    l.starts_with("bufscope_lock_wait_seconds_count{")
                        && l.contains("type=\"mutex\"")
                })
                .filter_map(|l| {
                    let lock = l.split('"').nth(1)?.to_string();
                    Some((l.rsplit(' ').next()?.parse::<u64>().ok()?, lock))
                })
                .max()
                .ok_or_else(|| format!("no mutex waits yet: {text}"))?;
            Ok((text, busiest.1))
        },
    );

    // promtool reads the classic format curl gets, and finds nothing to lint.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(served.as_bytes())
        .unwrap();
    let lint = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(
        lint.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}): {said}\non:\n{served}",
        lint.status
    );

    let served_waits =
        ServedCounter::start(metrics_port, "bufscope_events_total{kind=\"lock_wait\"}");
    let prometheus = Prometheus::start(dir.path(), metrics_port);
    let scrapes = wait_for("two successful scrapes", Duration::from_secs(60), || {
        live.assert_running(&live_log);
        let up = prometheus.vector("sum_over_time(up{job=\"bufscope\"}[5m])")?;
        match up.first() {
            Some((_, n)) if *n >= 2.0 => Ok(*n),
            _ => Err(format!("{up:?}")),
        }
    });
    let attempts = prometheus
        .vector("count_over_time(up{job=\"bufscope\"}[5m])")
        .unwrap()[0]
        .1;

    // The p99 of every lock's waits over the last 30 s, through the HTTP API: the pipe's mutex
    // has one, finite and positive, within the buckets (256 ns to 17 s).
    let p99_query = "histogram_quantile(0.99, sum by (le, lock) \
                     (rate(bufscope_lock_wait_seconds_bucket{job=\"bufscope\"}[30s])))";
    let p99 = wait_for(
        "a p99 of the pipe's mutex waits",
        Duration::from_secs(60),
        || {
            let result = prometheus.vector(p99_query)?;
            let pipe = result
                .iter()
                .find(|(labels, _)| labels["lock"] == pipe_lock.as_str())
                .map(|(_, v)| *v)
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("{result:?}"))?;
            Ok((pipe, result))
        },
    );
    let (pipe_p99, all_p99) = p99;
    assert!(
        pipe_p99 > 0.0 && pipe_p99 <= (1u64 << 34) as f64 / 1e9,
        "{pipe_lock}: p99 {pipe_p99} s"
    );
    // A lock without waits in the window has no quantile (NaN); none is negative or infinite.
    let finite = all_p99.iter().filter(|(_, v)| v.is_finite()).count();
    assert!(
        all_p99
            .iter()
            .all(|(_, v)| v.is_nan() || (*v > 0.0 && v.is_finite())),
        "{all_p99:?}"
    );
    // Each histogram's count is its +Inf bucket, as Prometheus read them.
    let count_vs_inf = prometheus
        .vector(
            "bufscope_lock_wait_seconds_count - ignoring(le) \
             bufscope_lock_wait_seconds_bucket{le=\"+Inf\"}",
        )
        .unwrap();
    assert!(!count_vs_inf.is_empty());
    assert!(
        count_vs_inf.iter().all(|(_, v)| *v == 0.0),
        "{count_vs_inf:?}"
    );

    // Every lock-wait count Prometheus stored is one bufscope served, in order, and it stored
    // more than one. (The reader of the served counter may not have read the newest yet.)
    let stored =
        prometheus.samples("bufscope_events_total{job=\"bufscope\",kind=\"lock_wait\"}[5m]");
    assert_eq!(stored.len(), 1, "{stored:?}");
    let stored: Vec<u64> = stored[0].1.iter().map(|v| *v as u64).collect();
    assert!(stored.len() >= 2, "{stored:?}");
    assert!(stored.is_sorted(), "a counter: {stored:?}");
    wait_for(
        "every stored lock-wait count among those bufscope served",
        Duration::from_secs(5),
        || {
            let seen = served_waits.values();
            match stored.iter().find(|v| !seen.contains(v)) {
                None => Ok(()),
                Some(v) => Err(format!(
                    "Prometheus stored {v} lock waits, which bufscope never served (it served \
                     {seen:?})"
                )),
            }
        },
    );
    drop(served_waits);
    eprintln!(
        "{scrapes} of {attempts} scrapes succeeded; p99 of {pipe_lock}: {:.1} µs; {finite} of {} locks with a p99; \
         lock-wait counts stored {stored:?}",
        pipe_p99 * 1e6,
        all_p99.len()
    );

    check_dashboard(&prometheus, &served_text(metrics_port).unwrap());
    eprintln!("{test}: {:.1?}", started.elapsed());
}

/// Every query of contrib/grafana/bufscope.json is valid PromQL (the real Prometheus runs it),
/// names only metrics bufscope serves, and shows data wherever this host has the figures; every
/// metric bufscope serves has a panel.
fn check_dashboard(prometheus: &Prometheus, served: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/grafana/bufscope.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let templating = dashboard["templating"]["list"].as_array().unwrap();
    let variables: Vec<String> = templating
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    let declared = declared_samples(served);
    let with_samples = names_with_samples(served);
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "{queries:?}");
    let mut families_used = BTreeSet::new();
    let mut with_data = 0;
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: {expr} selects no metric");
        for name in &names {
            let family = declared.get(name).unwrap_or_else(|| {
                panic!(
                    "{title}: {expr} uses {name}, which bufscope does not serve; it serves {:?}",
                    declared.keys()
                )
            });
            families_used.insert(family.clone());
        }
        let query = as_promql(expr, &variables);
        let answer = prometheus.query(&query);
        assert_eq!(answer["status"], "success", "{title}: {query}: {answer}");
        if names.iter().all(|n| with_samples.contains(n)) {
            let result = answer["data"]["result"].as_array().unwrap();
            assert!(
                !result.is_empty(),
                "{title}: {query} gave no data: {answer}"
            );
            with_data += 1;
        }
    }
    // The variables' own queries (Grafana's label_values) name served metrics too.
    for v in templating.iter().filter(|v| v["type"] == "query") {
        let definition = v["definition"].as_str().unwrap();
        let inner = definition
            .strip_prefix("label_values(")
            .unwrap_or_else(|| panic!("{definition}"));
        let names = metric_names(&inner[..inner.rfind(',').unwrap()]);
        assert!(
            !names.is_empty() && names.iter().all(|n| declared.contains_key(n)),
            "variable {}: {definition}",
            v["name"]
        );
    }
    let families: BTreeSet<String> = declared.values().cloned().collect();
    assert_eq!(families_used, families, "a metric without a panel");
    eprintln!(
        "dashboard: {} queries valid, {with_data} with data here, {} metric families covered",
        queries.len(),
        families.len()
    );
}
