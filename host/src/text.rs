//! Text that input controls, made safe to show: cut to a bound (on a
//! character boundary, saying how much was cut) and with control characters
//! escaped, so a record, a plugin or a file can neither flood a log or a
//! header nor forge a log line with an embedded newline or ANSI escape.

use std::borrow::Cow;

/// The longest error message kept from a plugin or a decoder, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary.
pub fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` cut to at most `max` bytes, with `… (N bytes)` appended when it
/// was cut.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("{}… ({} bytes)", prefix(text, max), text.len()))
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`) and cut to at
/// most `max` bytes of that, with `… (N bytes)` appended when it was cut
/// (`N` the length of `text`): one line, safe for a terminal. The bound
/// holds for the escaped text, so a line of control characters is not
/// five times longer than the bound.
pub fn quote_bounded(text: &str, max: usize) -> String {
    if text.len() <= max && !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len().min(max) + 24);
    for c in text.chars() {
        let escaped = c.is_control().then(|| c.escape_default());
        let len = escaped
            .as_ref()
            .map_or(c.len_utf8(), ExactSizeIterator::len);
        if out.len() + len > max {
            out.push_str(&format!("… ({} bytes)", text.len()));
            break;
        }
        match escaped {
            Some(escaped) => out.extend(escaped),
            None => out.push(c),
        }
    }
    out
}

/// `text` with every control character escaped as Rust writes it (`\n`,
/// `\t`, `\u{1b}`); borrowed when there is none.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A message for an operator from untrusted text: escaped and bounded by
/// [`MAX_MESSAGE_BYTES`].
pub fn message(text: &str) -> String {
    quote_bounded(text, MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_char_boundaries() {
        assert_eq!(prefix("héllo", 2), "h");
        assert_eq!(prefix("héllo", 3), "hé");
        assert_eq!(truncate("abcdef", 3), "abc… (6 bytes)");
        assert_eq!(truncate("abc", 3), "abc");
    }

    /// The bound is on what is written: a line of control characters,
    /// each escaped to six, is not six times the bound. (Before, it was
    /// cut and then escaped: 8 KiB of `\x01` came out as 48 KiB.)
    #[test]
    fn the_bound_holds_for_the_escaped_text() {
        let line = quote_bounded(&"\x01".repeat(100_000), 8192);
        let (kept, suffix) = line.split_once('…').unwrap();
        assert!(
            kept.len() <= 8192 && kept.len() > 8192 - 6,
            "{}",
            kept.len()
        );
        assert!(kept.chars().all(|c| !c.is_control()));
        assert_eq!(suffix, " (100000 bytes)");
        assert_eq!(quote_bounded("a\nb", 4), "a\\nb");
        assert_eq!(quote_bounded("a\nb", 3), "a\\n… (3 bytes)");
        assert_eq!(quote_bounded("abcdef", 3), "abc… (6 bytes)");
        assert_eq!(quote_bounded("héllo", 2), "h… (6 bytes)");
    }

    #[test]
    fn control_characters_are_escaped() {
        let forged = "ok\n2026-01-01T00:00:00Z  INFO todo_eventd::daemon: fake\u{1b}[31m";
        let safe = quote_bounded(forged, 1000);
        assert!(!safe.contains('\n') && !safe.contains('\u{1b}'), "{safe}");
        assert!(safe.starts_with("ok\\n2026"), "{safe}");
        assert!(safe.ends_with("\\u{1b}[31m"), "{safe}");
        assert!(matches!(escape_control("plain"), Cow::Borrowed(_)));
    }
}
