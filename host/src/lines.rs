//! Reading NDJSON input a line at a time, each line held to a bound: a
//! line longer than it — a file without a newline, `/dev/zero` — is read
//! past and measured, never held in memory. `plugins test` and `produce`
//! read their input this way.

use std::io::BufRead;

/// One input line: its bytes (without the newline), or only its length
/// when it is longer than the bound.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The line's bytes, without the newline.
    Text(&'a [u8]),
    /// A line longer than the bound, by its length.
    TooLong {
        /// Its length in bytes.
        bytes: usize,
    },
}

/// Lines of a reader, each held to `max` bytes: the rest of a longer line
/// is read past, not kept.
pub struct BoundedLines<R> {
    reader: R,
    max: usize,
    line: Vec<u8>,
    number: usize,
}

impl<R: BufRead> BoundedLines<R> {
    /// Lines of `reader`, each held to `max` bytes.
    pub fn new(reader: R, max: usize) -> Self {
        Self {
            reader,
            max,
            line: Vec::new(),
            number: 0,
        }
    }

    /// How many lines have been read.
    pub fn read(&self) -> usize {
        self.number
    }

    /// The next line and its number (from 1), or `None` at the end.
    pub fn next_line(&mut self) -> std::io::Result<Option<(usize, Line<'_>)>> {
        self.line.clear();
        let (mut bytes, mut read_any, mut too_long) = (0_usize, false, false);
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            };
            if available.is_empty() {
                break;
            }
            read_any = true;
            let newline = available.iter().position(|b| *b == b'\n');
            let chunk = &available[..newline.unwrap_or(available.len())];
            bytes = bytes.saturating_add(chunk.len());
            if bytes <= self.max {
                self.line.extend_from_slice(chunk);
            } else if !too_long {
                too_long = true;
                self.line = Vec::new();
            }
            let used = newline.map_or(chunk.len(), |at| at + 1);
            self.reader.consume(used);
            if newline.is_some() {
                break;
            }
        }
        if !read_any {
            return Ok(None);
        }
        self.number += 1;
        let line = if too_long {
            Line::TooLong { bytes }
        } else {
            Line::Text(&self.line)
        };
        Ok(Some((self.number, line)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize, capacity: usize) -> Vec<(usize, String)> {
        let mut lines = BoundedLines::new(std::io::BufReader::with_capacity(capacity, input), max);
        let mut seen = Vec::new();
        while let Some((number, line)) = lines.next_line().unwrap() {
            let shown = match line {
                Line::Text(text) => String::from_utf8_lossy(text).into_owned(),
                Line::TooLong { bytes } => format!("<{bytes} bytes>"),
            };
            seen.push((number, shown));
        }
        seen
    }

    #[test]
    fn lines_longer_than_the_bound_are_measured_not_kept() {
        let input = b"short\n0123456789abcdef\n\nexactly-10\nlast-no-newline-here";
        let expected = [
            (1, "short".to_owned()),
            (2, "<16 bytes>".to_owned()),
            (3, String::new()),
            (4, "exactly-10".to_owned()),
            (5, "<20 bytes>".to_owned()),
        ];
        // Lines across the reader's buffer boundaries read the same.
        for capacity in [1, 3, 7, 64] {
            assert_eq!(lines(input, 10, capacity), expected, "capacity {capacity}");
        }
        assert_eq!(lines(b"", 10, 8), []);
        assert_eq!(lines(b"a\n", 10, 8), [(1, "a".to_owned())]);
    }

    #[test]
    fn a_line_without_end_costs_no_more_memory_than_the_bound() {
        use std::io::Read;
        // 64 MiB of one line, read through a bound of 1 KiB.
        let endless = std::io::repeat(b'x').take(64 << 20);
        let mut lines = BoundedLines::new(std::io::BufReader::new(endless), 1024);
        let (number, line) = lines.next_line().unwrap().unwrap();
        assert_eq!((number, line), (1, Line::TooLong { bytes: 64 << 20 }));
        assert!(lines.line.capacity() <= 2048, "{}", lines.line.capacity());
        assert!(lines.next_line().unwrap().is_none());
    }
}
