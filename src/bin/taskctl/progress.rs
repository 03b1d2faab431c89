//! Showing a watched task as it changes: a live progress bar on a
//! terminal, otherwise one line per state (table) or one JSON object or
//! YAML document per message, so pipes and logs get plain text.
//!
//! Which display is used is decided once, from the output format and
//! whether stdout is a terminal; the watch loop in `commands` only feeds it
//! tasks.

use std::{
    io::IsTerminal,
    time::{Duration, SystemTime},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use task_processor::pb;

use crate::{
    cli::OutputFormat,
    errors::CliError,
    output::{self, Printer},
};

const BAR_TEMPLATE: &str = "{spinner} {prefix:<9} [{bar:30}] {pos:>3}% {elapsed:>4} {wide_msg}";

/// Where the states of a watched task go.
pub enum WatchDisplay {
    /// A bar redrawn in place on the terminal.
    Bar(ProgressBar),
    /// Lines or documents printed as they come.
    Lines(Printer),
}

impl WatchDisplay {
    pub fn new(printer: &Printer) -> Self {
        if printer.format == OutputFormat::Table && std::io::stdout().is_terminal() {
            Self::Bar(new_bar())
        } else {
            Self::Lines(printer.clone())
        }
    }

    /// Shows one state of the task.
    pub fn show(&self, task: &pb::Task) -> Result<(), CliError> {
        match self {
            Self::Bar(bar) => {
                bar.set_prefix(output::status_name(task.status));
                bar.set_position(u64::from(output::shown_percent(task)));
                bar.set_message(output::state_message(task, SystemTime::now()));
                Ok(())
            }
            Self::Lines(printer) => printer.print_watch_message(task),
        }
    }

    /// Takes the bar off the screen before the closing line is printed.
    pub fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn new_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stdout());
    // The template is a constant; should it ever be rejected, the default
    // bar still shows progress.
    let style = ProgressStyle::with_template(BAR_TEMPLATE)
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_template_is_valid() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    }
}
