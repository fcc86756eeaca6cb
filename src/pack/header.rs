//! Normalized tar headers.
//!
//! Every entry gets a ustar header with uid/gid 0, no user or group names, mtime = the source
//! date epoch, and a mode that depends only on the entry's kind and owner-exec bit. Paths and
//! link targets longer than the 100-byte ustar fields (or sizes past the 8 GiB octal limit) are
//! carried in a PAX extended header (`path`, `linkpath`, `size`) placed just before the entry;
//! the ustar prefix field is never used, so one rule decides the encoding of every name. Names
//! are raw bytes: non-UTF-8 names are stored as they are, in either place.

use tar::{EntryType, Header};

/// The largest value the 11-digit octal ustar fields hold (8 GiB - 1; year 2242 for mtime).
pub const USTAR_MAX: u64 = 0o77777777777;
const NAME_LEN: usize = 100;

/// The kind of entry, with what its header needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, executable: bool },
    Symlink { target: Vec<u8> },
}

impl Kind {
    /// The normalized permission bits: 0755 for directories and owner-executable files,
    /// 0644 for other files, 0777 for symlinks (as Linux reports them).
    pub fn mode(&self) -> u32 {
        match self {
            Kind::Dir => 0o755,
            Kind::File {
                executable: true, ..
            } => 0o755,
            Kind::File {
                executable: false, ..
            } => 0o644,
            Kind::Symlink { .. } => 0o777,
        }
    }
}

/// The headers for one entry: an optional PAX extended header (header + its data) and the
/// entry's own header. `path` is relative, without a leading `./` or trailing `/`.
pub fn headers(path: &[u8], kind: &Kind, mtime: u64) -> (Option<(Header, Vec<u8>)>, Header) {
    let mut name = path.to_vec();
    if *kind == Kind::Dir {
        name.push(b'/');
    }
    let mut pax: Vec<(&str, &[u8])> = Vec::new();
    if name.len() > NAME_LEN {
        pax.push(("path", &name));
    }
    if let Kind::Symlink { target } = kind
        && target.len() > NAME_LEN
    {
        pax.push(("linkpath", target));
    }
    let size = match kind {
        Kind::File { size, .. } => *size,
        _ => 0,
    };
    let size_text = size.to_string();
    if size > USTAR_MAX {
        pax.push(("size", size_text.as_bytes()));
    }

    let mut h = base(mtime);
    set_truncated(&mut h.as_old_mut().name, &name);
    h.set_mode(kind.mode());
    match kind {
        Kind::Dir => h.set_entry_type(EntryType::Directory),
        Kind::File { .. } => h.set_entry_type(EntryType::Regular),
        Kind::Symlink { target } => {
            h.set_entry_type(EntryType::Symlink);
            set_truncated(&mut h.as_old_mut().linkname, target);
        }
    }
    // Above 8 GiB the tar crate writes base-256; readers take the PAX size first.
    h.set_size(size);
    h.set_cksum();

    let ext = (!pax.is_empty()).then(|| {
        let data = pax_records(&pax);
        let mut x = base(mtime);
        // Fixed name in the style of GNU tar's `%d/PaxHeaders/%f`, kept within 100 bytes.
        let mut xname = b"PaxHeaders/".to_vec();
        xname.extend_from_slice(&name[name.len().saturating_sub(NAME_LEN - xname.len())..]);
        set_truncated(&mut x.as_old_mut().name, &xname);
        x.set_mode(0o644);
        x.set_entry_type(EntryType::XHeader);
        x.set_size(data.len() as u64);
        x.set_cksum();
        (x, data)
    });
    (ext, h)
}

fn base(mtime: u64) -> Header {
    let mut h = Header::new_ustar();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h
}

fn set_truncated(field: &mut [u8; NAME_LEN], value: &[u8]) {
    let n = value.len().min(NAME_LEN);
    field[..n].copy_from_slice(&value[..n]);
    field[n..].fill(0);
}

/// PAX records: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
pub fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_the_owner_exec_bit_only() {
        assert_eq!(Kind::Dir.mode(), 0o755);
        assert_eq!(
            Kind::File {
                size: 1,
                executable: true
            }
            .mode(),
            0o755
        );
        assert_eq!(
            Kind::File {
                size: 1,
                executable: false
            }
            .mode(),
            0o644
        );
        assert_eq!(
            Kind::Symlink {
                target: b"x".to_vec()
            }
            .mode(),
            0o777
        );
    }

    #[test]
    fn short_entries_are_plain_ustar_with_normalized_fields() {
        let (ext, h) = headers(
            b"usr/bin/app",
            &Kind::File {
                size: 42,
                executable: true,
            },
            1_700_000_000,
        );
        assert!(ext.is_none());
        assert_eq!(&h.as_bytes()[257..263], b"ustar\0");
        assert_eq!(h.path_bytes().as_ref(), b"usr/bin/app");
        assert_eq!(h.mode().unwrap(), 0o755);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.mtime().unwrap(), 1_700_000_000);
        assert_eq!(h.size().unwrap(), 42);
        assert_eq!(h.username_bytes(), Some(&b""[..]));
        assert_eq!(h.groupname_bytes(), Some(&b""[..]));
        let (_, d) = headers(b"etc", &Kind::Dir, 0);
        assert_eq!(d.path_bytes().as_ref(), b"etc/");
        assert_eq!(d.entry_type(), EntryType::Directory);
    }

    #[test]
    fn long_names_and_targets_go_to_pax_records() {
        let long = vec![b'a'; 300];
        let (ext, h) = headers(
            &long,
            &Kind::Symlink {
                target: vec![b'b'; 150],
            },
            5,
        );
        let (x, data) = ext.expect("pax header");
        assert_eq!(x.entry_type(), EntryType::XHeader);
        assert_eq!(x.size().unwrap(), data.len() as u64);
        let text = data.clone();
        assert!(
            text.starts_with(b"310 path=aaaa"),
            "{:?}",
            String::from_utf8_lossy(&text)
        );
        assert!(text.ends_with(&[b"164 linkpath=".as_slice(), &[b'b'; 150], b"\n"].concat()));
        assert_eq!(h.as_old().name.len(), 100);
        // A 100-byte path still fits in the ustar name field.
        let (ext, _) = headers(
            &[b'c'; 100],
            &Kind::File {
                size: 0,
                executable: false,
            },
            0,
        );
        assert!(ext.is_none());
        // ...but a 100-byte directory name needs the trailing slash, so it does not.
        let (ext, _) = headers(&[b'c'; 100], &Kind::Dir, 0);
        assert!(ext.is_some());
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        for n in [
            0usize, 1, 5, 89, 90, 91, 95, 96, 97, 990, 995, 996, 997, 1000,
        ] {
            let v = vec![b'x'; n];
            let rec = pax_records(&[("path", &v)]);
            let (len, _) = rec.split_at(rec.iter().position(|&b| b == b' ').unwrap());
            assert_eq!(
                std::str::from_utf8(len).unwrap().parse::<usize>().unwrap(),
                rec.len(),
                "n={n}"
            );
        }
    }

    #[test]
    fn non_utf8_names_are_kept_byte_for_byte() {
        let name = b"caf\xe9/\xff\xfe";
        let (_, h) = headers(
            name,
            &Kind::File {
                size: 0,
                executable: false,
            },
            0,
        );
        assert_eq!(h.path_bytes().as_ref(), name);
    }

    #[test]
    fn huge_sizes_get_a_pax_size() {
        let (ext, _) = headers(
            b"big",
            &Kind::File {
                size: USTAR_MAX + 1,
                executable: false,
            },
            0,
        );
        let (_, data) = ext.unwrap();
        assert!(
            String::from_utf8(data)
                .unwrap()
                .contains(&format!("size={}", USTAR_MAX + 1))
        );
    }
}
