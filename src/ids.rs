//! Ids for builds, runs and state directories: ULIDs (time-ordered, 26 characters), lower-cased
//! so they can name a container and a file.

use std::sync::Mutex;

/// A new id, unique and ordered by time (to the millisecond; ids of one millisecond sort at
/// random).
pub fn new_id() -> String {
    ulid::Ulid::generate().to_string().to_ascii_lowercase()
}

/// Ids that sort in the order this sequence made them, even within one millisecond: what the
/// state needs for its queue's first-come tie-break and its newest-first lists. Hosts of a
/// farm each have their own, and order by time only.
#[derive(Debug)]
pub struct Sequence(Mutex<ulid::Generator>);

impl Default for Sequence {
    fn default() -> Self {
        Sequence(Mutex::new(ulid::Generator::new()))
    }
}

impl Sequence {
    /// The next id: greater than every id this sequence made before.
    pub fn next(&self) -> String {
        let id = match crate::sync::lock(&self.0).generate() {
            Ok(id) => id,
            // 2^80 ids in one millisecond: not reachable; fall back to a random one.
            Err(_) => ulid::Ulid::generate(),
        };
        id.to_string().to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sequence_sorts_in_the_order_it_made_its_ids() {
        let seq = super::Sequence::default();
        let ids: Vec<String> = (0..1000).map(|_| seq.next()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert!(ids.iter().all(|id| id.len() == 26));
        assert_eq!(super::new_id().len(), 26);
    }
}
