//! The step driver's markers, in band: consecutive steps run in one exec of a small shell
//! driver ([`DRIVER`]) that prints, on the same standard output as the steps (so nothing can
//! arrive out of order), `\n\x1ekiln-step-<nonce> start N\n` before step N and
//! `\n\x1ekiln-step-<nonce> end N CODE\n` after it. [`Demux`] takes the stream apart into the
//! steps' bytes (exactly as they printed them) and the markers. The nonce is new per exec;
//! a step that learns it can only garble its own build's step records, never the decision:
//! the exec's exit code is the driver's, which stops at the first step that fails.

/// Runs its arguments after the first (the nonce) as steps, each `/bin/sh -c STEP` with its
/// standard error joined to its standard output, marking where each starts and ends; stops
/// at the first that fails, with its exit code.
pub(super) const DRIVER: &str = "umask @UMASK@
mark=$1
shift
i=0
for step in \"$@\"; do
  i=$((i + 1))
  printf '\\n\\036kiln-step-%s start %d\\n' \"$mark\" \"$i\"
  /bin/sh -c \"$step\" 2>&1
  code=$?
  printf '\\n\\036kiln-step-%s end %d %d\\n' \"$mark\" \"$i\" \"$code\"
  [ \"$code\" -eq 0 ] || exit \"$code\"
done";

/// A marker: where a step (1-based within the exec) starts or ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Marker {
    Start(usize),
    End(usize, i64),
}

impl Marker {
    fn parse(rest: &[u8]) -> Option<Marker> {
        let text = std::str::from_utf8(rest).ok()?;
        let mut w = text.split(' ');
        match (w.next()?, w.next()?.parse().ok()?, w.next(), w.next()) {
            ("start", i, None, None) => Some(Marker::Start(i)),
            ("end", i, Some(code), None) => Some(Marker::End(i, code.parse().ok()?)),
            _ => None,
        }
    }
}

/// A piece of the driver's output.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Piece {
    Output(Vec<u8>),
    Marker(Marker),
}

/// Longest marker body after the prefix (`end 4294967295 -9223372036854775808`).
const MAX_BODY: usize = 48;

/// Splits the driver's output into steps' bytes and markers, across chunk boundaries, with
/// bounded memory.
pub(super) struct Demux {
    prefix: Vec<u8>,
    pending: Vec<u8>,
}

impl Demux {
    pub(super) fn new(nonce: &str) -> Demux {
        Demux {
            prefix: format!("\n\x1ekiln-step-{nonce} ").into_bytes(),
            pending: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, bytes: &[u8]) -> Vec<Piece> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            match find(&self.pending, &self.prefix) {
                Some(p) => {
                    let body = p + self.prefix.len();
                    let nl = self.pending[body..]
                        .iter()
                        .take(MAX_BODY + 1)
                        .position(|&c| c == b'\n');
                    match nl {
                        Some(n) => {
                            if p > 0 {
                                out.push(Piece::Output(self.pending[..p].to_vec()));
                            }
                            let end = body + n;
                            match Marker::parse(&self.pending[body..end]) {
                                Some(m) => out.push(Piece::Marker(m)),
                                None => out.push(Piece::Output(self.pending[p..=end].to_vec())),
                            }
                            self.pending.drain(..=end);
                        }
                        // Not a marker after all: the prefix is output.
                        None if self.pending.len() - body > MAX_BODY => {
                            out.push(Piece::Output(self.pending[..body].to_vec()));
                            self.pending.drain(..body);
                        }
                        // Wait for the rest of the line.
                        None => {
                            if p > 0 {
                                out.push(Piece::Output(self.pending[..p].to_vec()));
                                self.pending.drain(..p);
                            }
                            return out;
                        }
                    }
                }
                None => {
                    // Keep only what could start a marker split across chunks.
                    let keep = partial_suffix(&self.pending, &self.prefix);
                    let cut = self.pending.len() - keep;
                    if cut > 0 {
                        out.push(Piece::Output(self.pending[..cut].to_vec()));
                        self.pending.drain(..cut);
                    }
                    return out;
                }
            }
        }
    }

    /// What is left when the stream ends.
    pub(super) fn finish(&mut self) -> Option<Piece> {
        (!self.pending.is_empty()).then(|| Piece::Output(std::mem::take(&mut self.pending)))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of the longest suffix of `hay` that is a proper prefix of `needle`.
fn partial_suffix(hay: &[u8], needle: &[u8]) -> usize {
    (1..needle.len().min(hay.len() + 1))
        .rev()
        .find(|&k| hay[hay.len() - k..] == needle[..k])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> (Vec<u8>, Vec<Marker>) {
        let mut d = Demux::new("n0");
        let (mut bytes, mut marks) = (Vec::new(), Vec::new());
        let mut take = |pieces: Vec<Piece>| {
            for p in pieces {
                match p {
                    Piece::Output(b) => bytes.extend(b),
                    Piece::Marker(m) => marks.push(m),
                }
            }
        };
        for c in chunks {
            take(d.push(c));
        }
        take(d.finish().into_iter().collect());
        (bytes, marks)
    }

    #[test]
    fn markers_come_out_and_output_stays_byte_exact_across_any_split() {
        let stream: &[u8] = b"\n\x1ekiln-step-n0 start 1\nhello\nno newline\n\x1ekiln-step-n0 end 1 0\n\n\x1ekiln-step-n0 start 2\n\x1ekiln-step-n9 start 7\nerr\n\x1ekiln-step-n0 end 2 3\n";
        let want_bytes = b"hello\nno newline\x1ekiln-step-n9 start 7\nerr".to_vec();
        let want_marks = vec![
            Marker::Start(1),
            Marker::End(1, 0),
            Marker::Start(2),
            Marker::End(2, 3),
        ];
        assert_eq!(run(&[stream]), (want_bytes.clone(), want_marks));
        for cut in 0..stream.len() {
            let (b, m) = run(&[&stream[..cut], &stream[cut..]]);
            assert_eq!(b, want_bytes, "cut at {cut}");
            assert_eq!(m.len(), 4, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(run(&bytes).0, want_bytes);
    }

    #[test]
    fn a_marker_lookalike_is_output_and_memory_stays_bounded() {
        let (b, m) = run(&[b"\n\x1ekiln-step-n0 start x\n"]);
        assert_eq!(b, b"\n\x1ekiln-step-n0 start x\n");
        assert!(m.is_empty());
        let mut d = Demux::new("n0");
        let mut long = b"\n\x1ekiln-step-n0 ".to_vec();
        long.extend(std::iter::repeat_n(b'x', 10_000));
        let _ = d.push(&long);
        assert!(d.pending.len() <= 64, "{}", d.pending.len());
        let _ = d.push(&vec![b'y'; 1 << 20]);
        assert!(d.pending.len() <= 64);
    }
}
