//! The terminal the full-screen view draws on: raw mode on the alternate screen, restored however
//! the view ends (the [`Screen`] dropped, or ratatui's panic hook), and the keys typed into it.

use std::io::IsTerminal;

use futures_util::StreamExt as _;
use ratatui::DefaultTerminal;

/// Why the terminal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ScreenError {
    #[error(
        "stdout is not a terminal: the full-screen view needs one (use --no-tui for interval \
         tables on stdout)"
    )]
    NotATerminal,
    #[error("setting up the terminal")]
    Setup(#[source] std::io::Error),
    #[error("drawing")]
    Draw(#[source] std::io::Error),
}

/// The terminal in raw mode on the alternate screen; restored when dropped.
pub struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    pub fn open() -> Result<Self, ScreenError> {
        if !std::io::stdout().is_terminal() {
            return Err(ScreenError::NotATerminal);
        }
        // Also installs a panic hook that restores the terminal before the message prints.
        Ok(Self {
            terminal: ratatui::try_init().map_err(ScreenError::Setup)?,
        })
    }

    /// Draws one frame.
    pub fn draw(&mut self, frame: impl FnOnce(&mut ratatui::Frame)) -> Result<(), ScreenError> {
        self.terminal.draw(frame).map_err(ScreenError::Draw)?;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

impl std::fmt::Debug for Screen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Screen")
    }
}

/// The next key pressed; `None` once the terminal's input ends.
pub async fn next_key(
    keys: &mut crossterm::event::EventStream,
) -> Option<crossterm::event::KeyEvent> {
    loop {
        match keys.next().await {
            Some(Ok(crossterm::event::Event::Key(k))) => return Some(k),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}
