//! The viewer's choices (focused panel, selected rows, sort, filter, open overlay, pause) and
//! what keys do to them, in top's and htop's habits. Keys that need the runner (quit, record,
//! designs, seek) come back as an [`Action`].

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use reference_cache::Design;

use super::model::{LockKey, LockSort, Model};

/// The panels, in Tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Panel {
    Locks,
    Clients,
    Compare,
    Charts,
}

impl Panel {
    pub const ALL: [Panel; 4] = [Panel::Locks, Panel::Clients, Panel::Compare, Panel::Charts];

    pub fn title(self) -> &'static str {
        match self {
            Panel::Locks => "Locks",
            Panel::Clients => "Clients",
            Panel::Compare => "Kernel vs designs",
            Panel::Charts => "Charts",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// What is drawn over the panels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Overlay {
    None,
    Help,
    /// The stacks of a lock (Enter on the lock table).
    Stacks {
        lock: LockKey,
        scroll: usize,
    },
    /// The design picker (d): a cursor and a check per design of [`Design::ALL`].
    Designs {
        cursor: usize,
        chosen: Vec<bool>,
    },
    /// The filter being typed (f).
    Filter(String),
}

/// Something only the runner can do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Quit,
    /// Sort or filter changed: derive the lock rows again.
    Refresh,
    /// Start or stop recording (live), play or pause (replay).
    ToggleRecording,
    TogglePause,
    Designs(Vec<Design>),
    CompareClient(u64),
    /// Replay only: jump this many seconds (negative: back).
    Seek(f64),
    /// Replay only: multiply the speed.
    Speed(f64),
}

#[derive(Clone, Debug)]
pub struct Ui {
    pub focus: Panel,
    /// Selected row per panel, indexed like [`Panel::ALL`].
    pub selected: [usize; 4],
    pub sort: LockSort,
    pub filter: String,
    pub overlay: Overlay,
    pub paused: bool,
    /// Driven by a trace file: seek and speed keys apply, `r` is not recording.
    pub replay: bool,
    /// The designs shown (the picker starts from them).
    pub designs: Vec<Design>,
}

impl Ui {
    pub fn new(designs: &[Design], replay: bool) -> Self {
        Self {
            focus: Panel::Locks,
            selected: [0; 4],
            sort: LockSort::default(),
            filter: String::new(),
            overlay: Overlay::None,
            paused: false,
            replay,
            designs: designs.to_vec(),
        }
    }

    pub fn selected(&self, panel: Panel) -> usize {
        self.selected[panel.index()]
    }

    fn rows(panel: Panel, model: &Model) -> usize {
        match panel {
            Panel::Locks => model.lock_rows.len(),
            Panel::Clients => model.clients.len(),
            Panel::Compare | Panel::Charts => 0,
        }
    }

    /// Keeps selections inside their tables after the rows changed.
    pub fn clamp(&mut self, model: &Model) {
        for panel in Panel::ALL {
            let n = Self::rows(panel, model);
            let s = &mut self.selected[panel.index()];
            *s = (*s).min(n.saturating_sub(1));
        }
    }

    fn move_by(&mut self, model: &Model, delta: isize) {
        let n = Self::rows(self.focus, model);
        let s = &mut self.selected[self.focus.index()];
        *s = s.saturating_add_signed(delta).min(n.saturating_sub(1));
    }

    /// Applies a key; what the runner must do comes back.
    pub fn on_key(&mut self, key: KeyEvent, model: &Model) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Some(Action::Quit);
        }
        if key.modifiers.contains(KeyModifiers::ALT) {
            // No key here is bound with Alt. A terminal sends Alt+X as Esc then X, and a program
            // that reads late (a busy machine) gets a quick Esc, Tab in one read, which crossterm
            // parses as Alt+Tab: do what was typed, Esc and then the key.
            let esc = self.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE), model);
            if esc == Some(Action::Quit) {
                return esc;
            }
            let plain = KeyEvent {
                modifiers: key.modifiers - KeyModifiers::ALT,
                ..key
            };
            return self.on_key(plain, model).or(esc);
        }
        match &mut self.overlay {
            Overlay::Filter(text) => {
                match key.code {
                    KeyCode::Enter => {
                        self.filter = std::mem::take(text);
                        self.overlay = Overlay::None;
                        self.selected[Panel::Locks.index()] = 0;
                        return Some(Action::Refresh);
                    }
                    KeyCode::Esc => self.overlay = Overlay::None,
                    KeyCode::Backspace => {
                        text.pop();
                    }
                    KeyCode::Char(c) => text.push(c),
                    _ => {}
                }
                return None;
            }
            Overlay::Designs { cursor, chosen } => {
                match key.code {
                    KeyCode::Up | KeyCode::Char('k') => *cursor = cursor.saturating_sub(1),
                    KeyCode::Down | KeyCode::Char('j') => {
                        *cursor = (*cursor + 1).min(chosen.len().saturating_sub(1));
                    }
                    KeyCode::Char(' ' | 'x') => {
                        if let Some(c) = chosen.get_mut(*cursor) {
                            *c = !*c;
                        }
                    }
                    KeyCode::Enter => {
                        let designs: Vec<Design> = Design::ALL
                            .iter()
                            .zip(chosen.iter())
                            .filter(|(_, on)| **on)
                            .map(|(d, _)| *d)
                            .collect();
                        self.overlay = Overlay::None;
                        if designs != self.designs {
                            self.designs.clone_from(&designs);
                            return Some(Action::Designs(designs));
                        }
                    }
                    KeyCode::Esc | KeyCode::Char('q' | 'd') => self.overlay = Overlay::None,
                    _ => {}
                }
                return None;
            }
            Overlay::Stacks { scroll, .. } => {
                match key.code {
                    KeyCode::Up | KeyCode::Char('k') => *scroll = scroll.saturating_sub(1),
                    KeyCode::Down | KeyCode::Char('j') => *scroll += 1,
                    KeyCode::PageUp => *scroll = scroll.saturating_sub(10),
                    KeyCode::PageDown => *scroll += 10,
                    KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') | KeyCode::Backspace => {
                        self.overlay = Overlay::None;
                    }
                    _ => {}
                }
                return None;
            }
            Overlay::Help => {
                self.overlay = Overlay::None;
                return None;
            }
            Overlay::None => {}
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Some(Action::Quit),
            KeyCode::Char('?' | 'h') | KeyCode::F(1) => self.overlay = Overlay::Help,
            KeyCode::Tab => {
                self.focus = Panel::ALL[(self.focus.index() + 1) % Panel::ALL.len()];
            }
            KeyCode::BackTab => {
                self.focus = Panel::ALL[(self.focus.index() + Panel::ALL.len() - 1) % 4];
            }
            KeyCode::Char('1') => self.focus = Panel::Locks,
            KeyCode::Char('2') => self.focus = Panel::Clients,
            KeyCode::Char('3') => self.focus = Panel::Compare,
            KeyCode::Char('4') => self.focus = Panel::Charts,
            KeyCode::Down | KeyCode::Char('j') => self.move_by(model, 1),
            KeyCode::Up | KeyCode::Char('k') => self.move_by(model, -1),
            KeyCode::PageDown => self.move_by(model, 10),
            KeyCode::PageUp => self.move_by(model, -10),
            KeyCode::Home | KeyCode::Char('g') => self.selected[self.focus.index()] = 0,
            KeyCode::End | KeyCode::Char('G') => self.move_by(model, isize::MAX / 2),
            KeyCode::Enter => match self.focus {
                Panel::Locks => {
                    if let Some(row) = model.lock_rows.get(self.selected(Panel::Locks)) {
                        self.overlay = Overlay::Stacks {
                            lock: row.key,
                            scroll: 0,
                        };
                    }
                }
                Panel::Clients => {
                    if let Some(c) = model.client_rows().get(self.selected(Panel::Clients)) {
                        return Some(Action::CompareClient(c.addr));
                    }
                }
                Panel::Compare | Panel::Charts => {}
            },
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                return Some(Action::Refresh);
            }
            KeyCode::Char('f' | '/') => self.overlay = Overlay::Filter(self.filter.clone()),
            KeyCode::Char('p' | ' ') => {
                self.paused = !self.paused;
                return Some(Action::TogglePause);
            }
            KeyCode::Char('r') if !self.replay => return Some(Action::ToggleRecording),
            KeyCode::Char('d') => {
                self.overlay = Overlay::Designs {
                    cursor: 0,
                    chosen: Design::ALL
                        .iter()
                        .map(|d| self.designs.contains(d))
                        .collect(),
                };
            }
            KeyCode::Right | KeyCode::Char('l') if self.replay => return Some(Action::Seek(10.0)),
            KeyCode::Left if self.replay => return Some(Action::Seek(-10.0)),
            KeyCode::Char('+' | '=') if self.replay => return Some(Action::Speed(2.0)),
            KeyCode::Char('-') if self.replay => return Some(Action::Speed(0.5)),
            _ => {}
        }
        None
    }
}

/// The help overlay's lines: (keys, what they do).
pub fn help_lines(replay: bool) -> Vec<(&'static str, &'static str)> {
    let mut lines = vec![
        ("j k ↑ ↓", "move in the focused table (PgUp PgDn g G)"),
        ("Tab 1-4", "next panel / panel by number"),
        ("Enter", "lock: its stacks; client: compare it"),
        ("s", "sort locks: total, waits, waits/s, max, p99"),
        ("f /", "filter locks by name or caller (Enter, Esc)"),
        ("d", "choose the designs compared (space, Enter)"),
    ];
    if replay {
        lines.push(("p space", "play / pause"));
        lines.push(("← →", "seek 10 s back / forward"));
        lines.push(("+ -", "faster / slower"));
    } else {
        lines.push(("p space", "pause the display (nothing is lost)"));
        lines.push(("r", "start / stop recording to a trace file"));
    }
    lines.push(("? h", "this help"));
    lines.push(("q Esc", "quit"));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::model::{BufioStatus, CompareSource, Header, Source};

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn model() -> Model {
        Model::new(
            Header::new(
                "6.12.0".into(),
                Source::Live {
                    attach: "tp_btf".into(),
                },
                BufioStatus::Unavailable("no dm-bufio".into()),
            ),
            CompareSource::Tables,
            &[Design::Classic],
        )
    }

    #[test]
    fn keys_move_focus_filter_sort_and_pick_designs() {
        let m = model();
        let mut ui = Ui::new(&[Design::Classic], false);
        assert_eq!(ui.focus, Panel::Locks);
        ui.on_key(key(KeyCode::Tab), &m);
        assert_eq!(ui.focus, Panel::Clients);
        ui.on_key(key(KeyCode::BackTab), &m);
        ui.on_key(key(KeyCode::BackTab), &m);
        assert_eq!(ui.focus, Panel::Charts);
        assert_eq!(
            ui.on_key(key(KeyCode::Char('s')), &m),
            Some(Action::Refresh)
        );
        assert_eq!(ui.sort, LockSort::Waits);
        ui.on_key(key(KeyCode::Char('f')), &m);
        for c in "tree".chars() {
            ui.on_key(key(KeyCode::Char(c)), &m);
        }
        ui.on_key(key(KeyCode::Backspace), &m);
        assert_eq!(ui.on_key(key(KeyCode::Enter), &m), Some(Action::Refresh));
        assert_eq!(ui.filter, "tre");
        // q inside the filter is text, not quit.
        ui.on_key(key(KeyCode::Char('/')), &m);
        assert_eq!(ui.on_key(key(KeyCode::Char('q')), &m), None);
        ui.on_key(key(KeyCode::Esc), &m);
        assert_eq!(ui.filter, "tre", "Esc keeps the old filter");
        ui.on_key(key(KeyCode::Char('d')), &m);
        ui.on_key(key(KeyCode::Char('j')), &m);
        ui.on_key(key(KeyCode::Char(' ')), &m);
        assert_eq!(
            ui.on_key(key(KeyCode::Enter), &m),
            Some(Action::Designs(vec![Design::Classic, Design::Sharded]))
        );
        assert_eq!(
            ui.on_key(key(KeyCode::Char('r')), &m),
            Some(Action::ToggleRecording)
        );
        assert_eq!(ui.on_key(key(KeyCode::Right), &m), None, "no seeking live");
        assert_eq!(ui.on_key(key(KeyCode::Char('q')), &m), Some(Action::Quit));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(ui.on_key(ctrl_c, &m), Some(Action::Quit));
    }

    #[test]
    fn an_esc_read_together_with_the_next_key_is_both_keys() {
        let m = model();
        let mut ui = Ui::new(&[], false);
        ui.overlay = Overlay::Help;
        let alt_tab = KeyEvent::new(KeyCode::Tab, KeyModifiers::ALT);
        assert_eq!(ui.on_key(alt_tab, &m), None);
        assert!(
            matches!(ui.overlay, Overlay::None),
            "the Esc closed the overlay"
        );
        assert_eq!(ui.focus, Panel::ALL[1], "the Tab moved the focus");
        let alt_q = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::ALT);
        assert_eq!(
            ui.on_key(alt_q, &m),
            Some(Action::Quit),
            "without an overlay, Esc quits"
        );
    }

    #[test]
    fn replay_keys_seek_and_change_speed() {
        let m = model();
        let mut ui = Ui::new(&[], true);
        assert_eq!(ui.on_key(key(KeyCode::Right), &m), Some(Action::Seek(10.0)));
        assert_eq!(ui.on_key(key(KeyCode::Left), &m), Some(Action::Seek(-10.0)));
        assert_eq!(
            ui.on_key(key(KeyCode::Char('+')), &m),
            Some(Action::Speed(2.0))
        );
        assert_eq!(ui.on_key(key(KeyCode::Char('r')), &m), None);
        assert_eq!(
            ui.on_key(key(KeyCode::Char('p')), &m),
            Some(Action::TogglePause)
        );
        assert!(ui.paused);
    }
}
