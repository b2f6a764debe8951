//! Progress bars for archive writing and reading: on a terminal only, never when piped.

use std::io::IsTerminal;
use std::sync::Arc;

use cpengine::archive;

/// An indicatif bar over bytes.
#[derive(Debug)]
pub struct Bar(indicatif::ProgressBar);

impl archive::Progress for Bar {
    fn update(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

impl Bar {
    /// A bar labelled `verb` if stderr is a terminal, else nothing.
    pub fn on_tty(verb: &str) -> Option<Arc<Bar>> {
        std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{verb} {{bar:40}} {{bytes}}/{{total_bytes}} ({{bytes_per_sec}})"
                ))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Arc::new(Bar(b))
        })
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
