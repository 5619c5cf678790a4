//! The progress bar, and log lines that do not tear it. Without a
//! terminal the bar is hidden and log lines go to stderr as they are.

use std::{borrow::Cow, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(steps: u64) -> Self {
        let bar = ProgressBar::new(steps);
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {wide_msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }

    /// What is running now.
    pub fn start(&self, message: impl Into<Cow<'static, str>>) {
        let message = message.into();
        if self.bar.is_hidden() {
            eprintln!("{message}");
        }
        self.bar.set_message(message);
    }

    pub fn done_step(&self) {
        self.bar.inc(1);
    }

    pub fn log(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
