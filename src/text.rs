//! Short forms of text for people: a commit's first characters, a message cut to a length.

/// The first 12 characters of a commit, for messages (safe on any string).
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// At most `n` characters; a cut is marked with `…`.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_forms() {
        assert_eq!(super::truncate("abcdef", 4), "abc…");
        assert_eq!(super::truncate("abc", 4), "abc");
        assert_eq!(super::short("0123456789abcdef"), "0123456789ab");
        assert_eq!(super::short("é"), "é");
    }
}
