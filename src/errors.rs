//! What the error types share: an error with its causes on one line (a reqwest error's
//! without its URL), and whether an I/O error can pass by itself.

/// An error and every cause below it, joined with `: `.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A reqwest error and its causes, without its URL: upload, blob and API URLs can carry
/// signed queries or tokens.
pub fn reqwest_chain(e: reqwest::Error) -> String {
    chain(&e.without_url())
}

/// Whether an I/O error is the kind that can go away on its own (an interrupted call, a reset
/// connection, a timeout), as opposed to one that repeats until someone acts (no space, no
/// permission, a missing file).
pub fn io_retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        Interrupted
            | WouldBlock
            | TimedOut
            | ConnectionReset
            | ConnectionAborted
            | ConnectionRefused
            | BrokenPipe
            | UnexpectedEof
            | NotConnected
    )
}
