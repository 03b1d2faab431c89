//! How errors are reported to a person: one line with the whole cause
//! chain. A leaf: every layer uses it, and it imports nothing of ours.

/// `outer: inner: innermost`, skipping causes already in the text, for one
/// log field or one message a person reads.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let part = current.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = current.source();
    }
    text
}
