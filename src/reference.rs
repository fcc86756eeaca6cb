//! Image references: `host[:port]/repository[:tag][@sha256:...]`.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// Docker Hub's API host, for references without a registry host.
pub const DOCKER_HUB: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` of the registry API.
    pub registry: String,
    /// The repository path, e.g. `team/app`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// A reference that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

impl Reference {
    /// What to ask the registry for: the digest if pinned, else the tag, else `latest`.
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }

    /// Whether the registry is on a loopback address, where plain HTTP is allowed as Docker
    /// allows it.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }
}

/// `localhost`, 127.0.0.0/8 or ::1, with or without a port.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, ReferenceError> {
        let err = |reason: &str| ReferenceError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let (rest, digest) = match input.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| err(&e.to_string()))?),
            ),
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(c) if slash.is_none_or(|s| c > s) => (&rest[..c], Some(rest[c + 1..].to_owned())),
            _ => (rest, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.starts_with('[') =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => {
                let path = if name.contains('/') {
                    name.to_owned()
                } else {
                    format!("library/{name}")
                };
                (DOCKER_HUB.to_owned(), path)
            }
        };
        if repository.is_empty()
            || !repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    })
            })
        {
            return Err(err(
                "the repository must be lowercase path components of [a-z0-9._-]",
            ));
        }
        if let Some(t) = &tag {
            crate::store::validate_tag(t).map_err(|e| err(&e.to_string()))?;
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let r: Reference = "127.0.0.1:5000/team/app:v1".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("v1"))
        );
        assert_eq!(r.target(), "v1");
        let d = Digest::of(b"x");
        let r: Reference = format!("ghcr.io/o/r@{d}").parse().unwrap();
        assert_eq!((r.tag, r.digest), (None, Some(d)));
        let r: Reference = "localhost:5000/app".parse().unwrap();
        assert_eq!(r.target(), "latest");
        let r: Reference = "busybox:1.36".parse().unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            (DOCKER_HUB, "library/busybox")
        );
        assert!("127.0.0.1:5000/App".parse::<Reference>().is_err());
        assert!(
            "127.0.0.1:5000/app@sha256:abc"
                .parse::<Reference>()
                .is_err()
        );
        assert_eq!(
            "[::1]:5000/a:b".parse::<Reference>().unwrap().to_string(),
            "[::1]:5000/a:b"
        );
    }

    #[test]
    fn loopback_detection() {
        for h in ["127.0.0.1:5000", "127.3.4.5", "localhost:1", "[::1]:5000"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["10.0.0.1:5000", "registry.example.com", "ghcr.io"] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
