//! The daemon's tag policy: which registry tags a commit's artifacts get from the refs that
//! reach it. The worker and the retagger move them; the dashboard shows them.

/// Tags for `commit` reached through `refs`: the full SHA always; a branch's name (which
/// moves) while the branch still points at this commit; a git tag's name, and for `vX.Y.Z`
/// also `X.Y.Z`. Names are made valid tags (`/` becomes `-`).
pub fn tags_for(commit: &str, refs: &[(String, bool)]) -> Vec<String> {
    let mut tags = vec![commit.to_owned()];
    for (r, is_head) in refs {
        if let Some(b) = r.strip_prefix("refs/heads/") {
            if *is_head && let Some(t) = tag_name(b) {
                tags.push(t);
            }
        } else if let Some(t) = r.strip_prefix("refs/tags/") {
            if let Some(n) = tag_name(t) {
                tags.push(n);
            }
            if let Some(v) = t.strip_prefix('v')
                && v.split(['-', '+']).next().is_some_and(|core| {
                    let parts: Vec<&str> = core.split('.').collect();
                    parts.len() == 3
                        && parts
                            .iter()
                            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                })
                && let Some(n) = tag_name(v)
            {
                tags.push(n);
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    tags.retain(|t| seen.insert(t.clone()));
    tags
}

/// A ref name as a registry tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn tag_name(name: &str) -> Option<String> {
    let mut t: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    while t.starts_with(['.', '-']) {
        t.remove(0);
    }
    t.truncate(128);
    (!t.is_empty()).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_scheme() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            tags_for(
                sha,
                &[
                    ("refs/heads/main".into(), true),
                    ("refs/heads/feature/x".into(), true),
                    ("refs/heads/old".into(), false),
                    ("refs/tags/v1.2.3".into(), true),
                    ("refs/tags/v2.0.0-rc.1".into(), true),
                    ("refs/tags/nightly".into(), true),
                    ("refs/tags/v1.2".into(), true),
                ]
            ),
            vec![
                sha.to_owned(),
                "main".into(),
                "feature-x".into(),
                "v1.2.3".into(),
                "1.2.3".into(),
                "v2.0.0-rc.1".into(),
                "2.0.0-rc.1".into(),
                "nightly".into(),
                "v1.2".into(),
            ]
        );
        assert_eq!(tag_name("-x/y"), Some("x-y".into()));
    }
}
