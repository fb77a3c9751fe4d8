//! The bufio-hotspot scenario's figures: what the test module timed itself (its lines in the
//! guest's kernel log), and what bufscope recorded of the same threads.

use anyhow::{Context, bail, ensure};

/// One thread of the module, as it reported itself.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleThread {
    pub hotspot: bool,
    pub pid: u32,
    pub acquisitions: u64,
    /// Time inside dm_bufio_read, summed.
    pub acquire_ns: u64,
    pub elapsed_ns: u64,
}

/// One load of the module: every thread's line.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleRun {
    pub threads: Vec<ModuleThread>,
}

impl ModuleRun {
    /// Parses the module's lines ("bufio_hotspot: thread=0 role=hotspot pid=... acquisitions=...
    /// acquire_ns=... elapsed_ns=..." and a closing "bufio_hotspot: done ... errors=0").
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut threads = Vec::new();
        let mut done = false;
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("bufio_hotspot: ") else {
                continue;
            };
            if let Some(done_line) = rest.strip_prefix("done ") {
                ensure!(
                    done_line.contains("errors=0"),
                    "the module reported errors: {line}"
                );
                done = true;
                continue;
            }
            if !rest.starts_with("thread=") || rest.contains("failed") {
                continue;
            }
            let field = |name: &str| -> anyhow::Result<&str> {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                    .with_context(|| format!("no {name}= in the module's line: {line}"))
            };
            let number = |name: &str| -> anyhow::Result<u64> {
                field(name)?
                    .parse()
                    .with_context(|| format!("{name} is not a number in: {line}"))
            };
            let hotspot = match field("role")? {
                "hotspot" => true,
                "dirtier" => false,
                other => bail!("unknown role {other} in: {line}"),
            };
            threads.push(ModuleThread {
                hotspot,
                pid: u32::try_from(number("pid")?)?,
                acquisitions: number("acquisitions")?,
                acquire_ns: number("acquire_ns")?,
                elapsed_ns: number("elapsed_ns")?,
            });
        }
        ensure!(done, "the module's lines end without \"done\": {text}");
        ensure!(
            threads.iter().any(|t| t.hotspot && t.acquisitions > 0),
            "no hotspot thread acquired a buffer: {text}"
        );
        Ok(Self { threads })
    }

    fn hotspots(&self) -> impl Iterator<Item = &ModuleThread> {
        self.threads.iter().filter(|t| t.hotspot)
    }

    /// The hotspot threads' mean acquisition time, over all their acquisitions.
    pub fn hotspot_mean_ns(&self) -> f64 {
        let (ns, n) = self.hotspots().fold((0u64, 0u64), |(ns, n), t| {
            (ns + t.acquire_ns, n + t.acquisitions)
        });
        ns as f64 / n.max(1) as f64
    }

    /// The hotspot threads' acquisitions per second of the longest one's run.
    pub fn hotspot_acquisitions_per_sec(&self) -> f64 {
        let n: u64 = self.hotspots().map(|t| t.acquisitions).sum();
        let longest = self.hotspots().map(|t| t.elapsed_ns).max().unwrap_or(0);
        n as f64 * 1e9 / longest.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &str = "\
bufio_hotspot: thread=0 role=hotspot pid=101 acquisitions=1000 acquire_ns=2000000 elapsed_ns=4000000
bufio_hotspot: thread=1 role=hotspot pid=102 acquisitions=3000 acquire_ns=2000000 elapsed_ns=8000000
bufio_hotspot: thread=2 role=dirtier pid=103 acquisitions=500 acquire_ns=9000000 elapsed_ns=8000000
bufio_hotspot: done threads=3 errors=0
";

    #[test]
    fn the_module_lines_give_the_hotspot_figures() {
        let run = ModuleRun::parse(LINES).unwrap();
        assert_eq!(run.threads.len(), 3);
        assert_eq!(run.threads[2].pid, 103);
        // 4 ms over 4,000 acquisitions; the dirtier's are not counted.
        assert_eq!(run.hotspot_mean_ns(), 1000.0);
        // 4,000 acquisitions in the longest hotspot thread's 8 ms.
        assert_eq!(run.hotspot_acquisitions_per_sec(), 500_000.0);
    }

    #[test]
    fn a_failed_or_unfinished_run_is_an_error() {
        let failed = LINES.replace("errors=0", "errors=1");
        assert!(ModuleRun::parse(&failed).is_err());
        let unfinished = LINES.replace("bufio_hotspot: done threads=3 errors=0\n", "");
        assert!(ModuleRun::parse(&unfinished).is_err());
        let garbled = LINES.replace("acquisitions=1000", "acquisitions=many");
        assert!(
            ModuleRun::parse(&garbled)
                .unwrap_err()
                .to_string()
                .contains("acquisitions is not a number")
        );
    }
}
