//! Reading a child process's output line by line on a background thread.

use std::io::{BufRead, BufReader, Read};
use std::thread;

/// Calls `on_line` for every line `reader` produces until EOF.
///
/// A plain OS thread (not a tokio task) so capture keeps working whether or not
/// the caller is inside a runtime, and outlives any one test's runtime. Invalid
/// UTF-8 is replaced rather than dropped: a garbled log line is still evidence.
pub(crate) fn for_each_line<R, F>(reader: R, thread_name: String, mut on_line: F)
where
    R: Read + Send + 'static,
    F: FnMut(String) + Send + 'static,
{
    thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        on_line(line.trim_end_matches(['\n', '\r']).to_owned());
                    }
                }
            }
        })
        .expect("failed to spawn an output-reader thread");
}
