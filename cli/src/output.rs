//! What the commands print: pretty JSON for machines, aligned key/value tables (the engine's
//! one layout, [`cpengine::report::write_table`]) and reports for people.

use std::fmt;

/// Prints `value` as pretty JSON on stdout.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a report as JSON with `--json`, else as its human form.
pub fn report<T: serde::Serialize + fmt::Display>(value: &T, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        json(value)
    } else {
        print!("{value}");
        Ok(())
    }
}

/// `rows` as an indented two-column table, the keys at least `min_width` wide.
pub fn table<K: AsRef<str>, V: fmt::Display>(rows: &[(K, V)], min_width: usize) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = cpengine::report::write_table(&mut out, rows, min_width);
    out
}
