//! A trace file played on a clock, for `replay --tui` and for the bundled sample the live view
//! compares when this kernel has no dm-bufio: each step hands over the events that began since
//! the last one, at a chosen speed, with pause, seek and (for the sample) looping.

use std::time::Duration;

use bufscope_trace::{BufioOp, LockWait};

use bufscope_analyses::tracedata::TraceData;

/// An event handed over by [`Playback::advance`].
#[derive(Clone, Copy, Debug)]
pub enum Played<'a> {
    Wait(&'a LockWait),
    Op(&'a BufioOp),
    /// A looping playback went back to the trace's start: the events after this begin earlier
    /// than those before it.
    Rewound,
}

#[derive(Debug)]
pub struct Playback {
    /// The trace, waits and operations sorted by start.
    pub trace: TraceData,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Everything that began before this has been handed over.
    pub position_ns: u64,
    pub speed: f64,
    pub playing: bool,
    /// Start over at the end instead of stopping.
    pub looping: bool,
    /// Times the end was reached.
    pub loops: u64,
    next_wait: usize,
    next_op: usize,
}

impl Playback {
    /// `None` when the trace has no events.
    pub fn new(mut trace: TraceData, speed: f64, looping: bool) -> Option<Self> {
        trace.waits.sort_by_key(|w| w.start_ns);
        trace.ops.sort_by_key(|o| o.start_ns);
        let (start_ns, end_ns) = trace.span_ns()?;
        Some(Self {
            trace,
            start_ns,
            end_ns,
            position_ns: start_ns,
            speed,
            playing: true,
            looping,
            loops: 0,
            next_wait: 0,
            next_op: 0,
        })
    }

    pub fn span_ns(&self) -> u64 {
        self.end_ns - self.start_ns
    }

    pub fn at_end(&self) -> bool {
        self.position_ns > self.end_ns
    }

    /// Moves `wall` time on (times the speed; nothing while paused), handing over the events
    /// that began in between. Returns the trace time covered, in seconds.
    pub fn advance(&mut self, wall: Duration, mut take: impl FnMut(Played)) -> f64 {
        if !self.playing {
            return 0.0;
        }
        let mut left = (wall.as_nanos() as f64 * self.speed) as u64;
        let mut covered = 0;
        while left > 0 {
            let to = self.position_ns.saturating_add(left).min(self.end_ns + 1);
            covered += to - self.position_ns;
            left -= to - self.position_ns;
            self.hand_over(to, &mut take);
            if self.at_end() {
                self.loops += 1;
                if !self.looping {
                    self.playing = false;
                    break;
                }
                self.rewind();
                take(Played::Rewound);
            }
        }
        covered as f64 / 1e9
    }

    /// Hands over everything that began before `to` and moves there.
    fn hand_over(&mut self, to: u64, take: &mut impl FnMut(Played)) {
        while let Some(w) = self.trace.waits.get(self.next_wait)
            && w.start_ns < to
        {
            take(Played::Wait(w));
            self.next_wait += 1;
        }
        while let Some(o) = self.trace.ops.get(self.next_op)
            && o.start_ns < to
        {
            take(Played::Op(o));
            self.next_op += 1;
        }
        self.position_ns = to;
    }

    fn rewind(&mut self) {
        self.position_ns = self.start_ns;
        self.next_wait = 0;
        self.next_op = 0;
    }

    /// Jumps to `to` (clamped to the trace). Forward, the events skipped are handed over;
    /// backward, the playback starts over and hands over everything up to `to`, so the taker
    /// (which has been reset) sees the same totals as if it had played there. Returns whether
    /// it went backward.
    pub fn seek(&mut self, to_ns: u64, mut take: impl FnMut(Played)) -> bool {
        let to = to_ns.clamp(self.start_ns, self.end_ns + 1);
        let backward = to < self.position_ns;
        if backward {
            self.rewind();
        }
        self.hand_over(to, &mut take);
        backward
    }
}

#[cfg(test)]
mod tests {
    use bufscope_trace::OpKind;

    use super::*;

    fn trace() -> TraceData {
        let mut t = TraceData::default();
        for i in 0..10u64 {
            t.waits.push(LockWait {
                start_ns: 1_000_000_000 + i * 100_000_000,
                wait_ns: 10,
                ..Default::default()
            });
        }
        t.ops.push(BufioOp {
            start_ns: 1_500_000_000,
            duration_ns: 1,
            client: 1,
            block: 0,
            tid: 1,
            tgid: 1,
            cpu: 0,
            kind: OpKind::Get,
            result: bufscope_trace::OpResult::Hit,
            arg0: 0,
            arg1: 0,
            lock_wait_ns: 0,
            lock_hold_ns: 0,
            lock_attempt_ns: 0,
            lock_release_ns: 0,
        });
        t
    }

    #[test]
    fn plays_at_speed_stops_or_loops_at_the_end_and_seeks() {
        let mut p = Playback::new(trace(), 2.0, false).unwrap();
        let counts = std::cell::Cell::new((0, 0));
        let count = |e: Played| {
            let (w, o) = counts.get();
            counts.set(match e {
                Played::Wait(_) => (w + 1, o),
                Played::Op(_) => (w, o + 1),
                Played::Rewound => panic!("a playback that does not loop never rewinds"),
            });
        };
        // 100 ms of wall time at 2x: the first 200 ms of the trace, waits at 0, 100 ms.
        let covered = p.advance(Duration::from_millis(100), count);
        assert!((covered - 0.2).abs() < 1e-9);
        assert_eq!(counts.get(), (2, 0));
        let _ = p.advance(Duration::from_secs(10), count);
        assert_eq!(counts.get(), (10, 1));
        assert!(!p.playing && p.at_end(), "stops at the end");
        assert_eq!(p.advance(Duration::from_secs(1), count), 0.0);

        let (mut w2, mut o2) = (0, 0);
        let backward = p.seek(1_550_000_000, |e| match e {
            Played::Wait(_) => w2 += 1,
            Played::Op(_) => o2 += 1,
            Played::Rewound => panic!("a seek's taker was reset: no rewind is handed over"),
        });
        assert!(backward);
        assert_eq!(
            (w2, o2),
            (6, 1),
            "everything before 1.55 s handed over again"
        );

        let mut looping = Playback::new(trace(), 1.0, true).unwrap();
        let (mut n, mut rewinds) = (0, 0);
        let _ = looping.advance(Duration::from_millis(2_000), |e| match e {
            Played::Rewound => rewinds += 1,
            _ => n += 1,
        });
        assert_eq!(looping.loops, 2, "0.9 s of trace: twice round in 2 s");
        assert_eq!(rewinds, 2, "each loop says so");
        assert!(looping.playing);
        assert!(n > 22);
    }
}
