//! List files (`filter_ctl::spec::listfile::parse`): one address or prefix a
//! line, `#` and `;` start comments, blank lines are skipped, a byte order
//! mark may start the file. The streaming reader may refuse more than the
//! simple reading below (it bounds lines, it wants every line UTF-8), but
//! what it accepts must be exactly what that reading gives, and a file that
//! reading refuses must be refused.
#![no_main]

use std::path::Path;

use filter_ctl::spec::{cidr::Cidr, listfile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let result = listfile::parse(data, Path::new("fuzz.list"));
    let expected = reference(&String::from_utf8_lossy(data));
    match &result {
        Ok(entries) => assert_eq!(
            Some(entries),
            expected.as_ref(),
            "accepted {:?}",
            String::from_utf8_lossy(data)
        ),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if std::str::from_utf8(data).is_ok() && expected.is_none() {
        assert!(
            result.is_err(),
            "accepted a bad entry in {:?}",
            String::from_utf8_lossy(data)
        );
    }
});

/// The whole file at once (less a byte order mark): every line's text
/// before a comment, trimmed, parsed; `None` if any entry does not parse.
fn reference(text: &str) -> Option<Vec<Cidr>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.lines()
        .map(|line| line.split(['#', ';']).next().unwrap_or("").trim())
        .filter(|content| !content.is_empty())
        .map(|content| content.parse().ok())
        .collect()
}
