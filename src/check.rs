//! Checking TOML files (recipes, the daemon config) in one pass that reports every problem,
//! each with its line and dotted key, instead of stopping at the first.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem in a checked file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    /// The dotted key, e.g. `build.timeout` or `artifact[1].name`.
    pub key: String,
    pub message: String,
}

/// Every problem found in a checked file (a recipe, a daemon config).
#[derive(Debug, thiserror::Error)]
pub struct CheckError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} has {n} problem{}:",
            self.path.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.key.is_empty() {
                write!(f, "\n  {}:{}: {}", self.path.display(), p.line, p.message)?;
            } else {
                write!(
                    f,
                    "\n  {}:{}: {}: {}",
                    self.path.display(),
                    p.line,
                    p.key,
                    p.message
                )?;
            }
        }
        Ok(())
    }
}

pub(crate) type Val<'a> = Spanned<DeValue<'a>>;

pub(crate) struct Checker<'t> {
    pub(crate) text: &'t str,
    pub(crate) problems: Vec<Problem>,
}

pub(crate) fn type_name(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl Checker<'_> {
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    pub(crate) fn problem(&mut self, span_start: usize, key: &str, message: impl Into<String>) {
        let line = self.line(span_start);
        self.problems.push(Problem {
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    /// Flag keys of `table` not in `known`.
    pub(crate) fn unknown_keys(&mut self, table: &DeTable, prefix: &str, known: &[&str]) {
        for (k, _) in table.iter() {
            if !known.contains(&k.get_ref().as_ref()) {
                let key = if prefix.is_empty() {
                    k.get_ref().to_string()
                } else {
                    format!("{prefix}.{}", k.get_ref())
                };
                let hint = format!("unknown key (expected one of: {})", known.join(", "));
                self.problem(k.span().start, &key, hint);
            }
        }
    }

    pub(crate) fn get<'a, 'b>(&self, table: &'b DeTable<'a>, key: &str) -> Option<&'b Val<'a>> {
        table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    pub(crate) fn string(
        &mut self,
        table: &DeTable,
        prefix: &str,
        key: &str,
    ) -> Option<(String, usize)> {
        let v = self.get(table, key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span().start)),
            other => {
                let t = type_name(other);
                self.problem(
                    v.span().start,
                    &format!("{prefix}.{key}"),
                    format!("expected a string, found {t}"),
                );
                None
            }
        }
    }

    pub(crate) fn bool(&mut self, table: &DeTable, prefix: &str, key: &str) -> Option<bool> {
        let v = self.get(table, key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                let t = type_name(other);
                self.problem(
                    v.span().start,
                    &format!("{prefix}.{key}"),
                    format!("expected true or false, found {t}"),
                );
                None
            }
        }
    }

    pub(crate) fn strings(
        &mut self,
        table: &DeTable,
        prefix: &str,
        key: &str,
    ) -> Option<(Vec<String>, usize)> {
        let v = self.get(table, key)?;
        let full = format!("{prefix}.{key}");
        let DeValue::Array(items) = v.get_ref() else {
            let t = type_name(v.get_ref());
            self.problem(
                v.span().start,
                &full,
                format!("expected an array of strings, found {t}"),
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push(s.to_string()),
                other => {
                    let t = type_name(other);
                    self.problem(
                        item.span().start,
                        &format!("{full}[{i}]"),
                        format!("expected a string, found {t}"),
                    );
                }
            }
        }
        Some((out, v.span().start))
    }

    pub(crate) fn string_table(
        &mut self,
        table: &DeTable,
        prefix: &str,
        key: &str,
        env: bool,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(v) = self.get(table, key) else {
            return out;
        };
        let full = format!("{prefix}.{key}");
        let DeValue::Table(t) = v.get_ref() else {
            let t = type_name(v.get_ref());
            self.problem(
                v.span().start,
                &full,
                format!("expected a table of strings, found {t}"),
            );
            return out;
        };
        for (k, val) in t.iter() {
            let name = k.get_ref().to_string();
            let at = format!("{full}.{name}");
            if env {
                let valid = name
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    self.problem(k.span().start, &at, "not a valid environment variable name");
                } else if name == "SOURCE_DATE_EPOCH" {
                    self.problem(
                        k.span().start,
                        &at,
                        "is set by kiln to the commit time and cannot be overridden",
                    );
                }
            }
            match val.get_ref() {
                DeValue::String(s) => {
                    out.insert(name, s.to_string());
                }
                other => {
                    let t = type_name(other);
                    self.problem(
                        val.span().start,
                        &at,
                        format!("expected a string, found {t}"),
                    );
                }
            }
        }
        out
    }
}

/// Parse `bytes` as TOML and hand the document to `check`; every problem it (or the TOML
/// parser) reports comes back, sorted by line. `path` is only for messages.
pub(crate) fn check<T>(
    bytes: &[u8],
    path: &Path,
    check: impl FnOnce(&mut Checker, &DeTable) -> Option<T>,
) -> Result<T, CheckError> {
    let fail = |problems| CheckError {
        path: path.to_owned(),
        problems,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        fail(vec![Problem {
            line: 0,
            key: String::new(),
            message: format!("not UTF-8: {e}"),
        }])
    })?;
    let mut c = Checker {
        text,
        problems: Vec::new(),
    };
    let value = match DeTable::parse(text) {
        Ok(doc) => check(&mut c, doc.get_ref()),
        Err(e) => {
            let line = e.span().map_or(0, |s| c.line(s.start));
            c.problems.push(Problem {
                line,
                key: String::new(),
                message: e.message().to_owned(),
            });
            None
        }
    };
    c.problems.sort_by_key(|p| p.line);
    match value {
        Some(v) if c.problems.is_empty() => Ok(v),
        _ => Err(fail(c.problems)),
    }
}

/// Read a file and check it with [`check`]; a file that cannot be read is one problem.
pub(crate) fn load<T>(
    path: &Path,
    f: impl FnOnce(&mut Checker, &DeTable) -> Option<T>,
) -> Result<T, CheckError> {
    let bytes = std::fs::read(path).map_err(|e| CheckError::unreadable(path, &e))?;
    check(&bytes, path, f)
}

impl CheckError {
    /// The file could not be read at all.
    pub fn unreadable(path: &Path, e: &std::io::Error) -> Self {
        CheckError {
            path: path.to_owned(),
            problems: vec![Problem {
                line: 0,
                key: String::new(),
                message: format!("cannot read: {e}"),
            }],
        }
    }
}
