//! Epochs: what each promotion begins, and where two logs' histories fork.
//!
//! An epoch fits 32 bits (a WAL frame carries it in 4 bytes) in two parts: the **term** (the
//! high [`EPOCH_TERM_BITS`]: how many promotions lie behind it) and the **tag** (the low
//! [`EPOCH_TAG_BITS`], never zero: drawn at random by the node that promoted itself). Two
//! standbys promoted from the same epoch both take term + 1 but, but for a one-in-a-million
//! chance, different tags, so they do not lead the *same* epoch: one is higher and fences the
//! other, whose log forks from it where the two histories first differ ([`fork_between`]).
//! Epochs of a log written before tags existed (1, 2, 3 ...) are term 0 and order below
//! every promotion since.

use crate::types::Lsn;

/// Bits of an epoch below its term.
pub const EPOCH_TAG_BITS: u32 = 20;
/// Bits of an epoch's term.
pub const EPOCH_TERM_BITS: u32 = 32 - EPOCH_TAG_BITS;
/// The highest term: a log goes through this many promotions at most.
pub const EPOCH_TERM_MAX: u64 = (1 << EPOCH_TERM_BITS) - 1;
/// The tag of a promotion's epoch is one of 1..=this.
pub const EPOCH_TAG_MAX: u32 = (1 << EPOCH_TAG_BITS) - 1;
/// The highest epoch there is.
pub const EPOCH_MAX: u64 = u32::MAX as u64;

/// How many terms past its own epoch a node believes an epoch that a replication peer names
/// (in a `Fence`, or as its log's last epoch): each promotion goes one term past the highest
/// epoch its node knows of, so this many promotions must have followed one another, each
/// unseen by this node, to reach further. A peer naming an epoch further ahead is refused
/// rather than believed: believed, it would fence this node and, relayed, use up the terms
/// (one named [`EPOCH_MAX`] would leave no term for any promotion).
pub const EPOCH_TERMS_AHEAD_MAX: u64 = 16;

/// Whether `theirs`, an epoch a peer names, lies within [`EPOCH_TERMS_AHEAD_MAX`] terms of
/// `own` (any epoch at or below `own` does).
pub fn epoch_within_reach(own: u64, theirs: u64) -> bool {
    assert!(own <= EPOCH_MAX, "epoch {own} past {EPOCH_MAX}");
    theirs <= EPOCH_MAX && epoch_term(theirs) <= epoch_term(own) + EPOCH_TERMS_AHEAD_MAX
}

/// How many promotions lie behind `epoch`.
pub fn epoch_term(epoch: u64) -> u64 {
    epoch >> EPOCH_TAG_BITS
}

/// The epoch a promotion from `current` begins: the next term, tagged with `tag` (1 ..=
/// [`EPOCH_TAG_MAX`]; the node draws it, so that two nodes promoted from `current` lead
/// different epochs). `None` once the terms are used up.
pub fn epoch_after(current: u64, tag: u32) -> Option<u64> {
    assert!((1..=EPOCH_TAG_MAX).contains(&tag), "an epoch tag is in 1..={EPOCH_TAG_MAX}, not {tag}");
    assert!(current <= EPOCH_MAX, "epoch {current} past {EPOCH_MAX}");
    let term = epoch_term(current) + 1;
    if term > EPOCH_TERM_MAX {
        return None;
    }
    let epoch = (term << EPOCH_TAG_BITS) | u64::from(tag);
    debug_assert!(epoch > current && epoch <= EPOCH_MAX && epoch_term(epoch) == term);
    Some(epoch)
}

/// Whether `history` is one: epochs (past the first, at most [`EPOCH_MAX`]) and their first
/// LSNs (past 0) both strictly ascending.
pub fn is_history(history: &[(u64, Lsn)]) -> bool {
    history.first().is_none_or(|&(epoch, lsn)| epoch > crate::EPOCH_FIRST && lsn.0 >= 1)
        && history.last().is_none_or(|&(epoch, _)| epoch <= EPOCH_MAX)
        && history.windows(2).all(|pair| pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1)
}

/// Where a standby's log stands against the primary's, from their epoch histories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fork {
    /// The histories agree: every record the standby holds is the primary's.
    None,
    /// The histories part at this LSN: a standby that holds a record at or past it has
    /// diverged there and must cut its log before it.
    At(Lsn),
    /// The standby sent only the tail of a long history and none of it is the primary's: no
    /// common point is known (the standby needs a base backup).
    Unknown,
}

/// Compares two epoch histories (each: every epoch after the first with the LSN of its
/// `EpochChanged` record, ascending, as [`crate::Engine::epoch_history`] gives them). `theirs`
/// may be the tail of a longer history (`theirs_complete` false); then it is matched from its
/// first entry on.
///
/// The two logs agree up to the end of the last epoch both have; after it, each went on in
/// that epoch until its own next epoch began, so they part at the *earlier* of those two
/// beginnings. Regression: the fork was the primary's next epoch after the standby's last,
/// which missed a standby whose own promotion came first (two standbys promoted from one
/// epoch, the one promoted earlier rejoining the other kept its records between the two
/// promotions).
///
/// `theirs` comes off the network: its order is checked where it is decoded, and asserted here.
pub fn fork_between(ours: &[(u64, Lsn)], theirs: &[(u64, Lsn)], theirs_complete: bool) -> Fork {
    assert!(is_history(ours), "our epoch history is out of order");
    assert!(is_history(theirs), "an epoch history out of order got past its decoder");
    let start = if theirs_complete {
        0
    } else {
        match theirs.first() {
            None => 0,
            Some(first) => match ours.iter().position(|entry| entry == first) {
                Some(position) => position,
                None => return Fork::Unknown,
            },
        }
    };
    let ours = &ours[start..];
    let common = ours.iter().zip(theirs).take_while(|(left, right)| left == right).count();
    let fork = match (ours.get(common), theirs.get(common)) {
        (None, None) => return Fork::None,
        (Some(&(_, lsn)), None) | (None, Some(&(_, lsn))) => lsn,
        (Some(&(_, left)), Some(&(_, right))) => left.min(right),
    };
    debug_assert!(fork.0 >= 1);
    Fork::At(fork)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[(u64, u64)]) -> Vec<(u64, Lsn)> {
        entries.iter().map(|&(epoch, lsn)| (epoch, Lsn(lsn))).collect()
    }

    /// One comparison and what it must give.
    fn check(ours: &[(u64, u64)], theirs: &[(u64, u64)], complete: bool, expected: Fork) {
        assert_eq!(fork_between(&history(ours), &history(theirs), complete), expected, "{ours:?} vs {theirs:?}");
    }

    #[test]
    fn epochs_after_one_are_ordered_by_term_then_tag() {
        let a = epoch_after(1, 7).unwrap();
        let b = epoch_after(1, EPOCH_TAG_MAX).unwrap();
        assert_eq!((epoch_term(a), epoch_term(b)), (1, 1));
        assert!(a < b && a > 1);
        assert!(epoch_after(a, 1).unwrap() > b, "a later term is higher whatever its tag");
        assert_eq!(epoch_term(2), 0, "the epochs of a log from before tags are term 0");
        assert_eq!(epoch_term(epoch_after(2, 1).unwrap()), 1);
        let last = (EPOCH_TERM_MAX << EPOCH_TAG_BITS) | 5;
        assert_eq!(last, epoch_after(last - 5 - (1 << EPOCH_TAG_BITS), 5).unwrap());
        assert!(last <= EPOCH_MAX, "the last term's epochs fit a frame's 4 bytes");
        assert_eq!(epoch_after(last, 1), None, "the terms are used up");
    }

    #[test]
    fn an_epoch_is_within_reach_up_to_the_terms_ahead_max() {
        let own = epoch_after(1, 9).unwrap();
        let mut reached = own;
        for _ in 0..EPOCH_TERMS_AHEAD_MAX {
            reached = epoch_after(reached, EPOCH_TAG_MAX).unwrap();
            assert!(epoch_within_reach(own, reached), "{reached} after {own}");
        }
        assert!(!epoch_within_reach(own, epoch_after(reached, 1).unwrap()), "one term further");
        assert!(!epoch_within_reach(own, EPOCH_MAX));
        assert!(!epoch_within_reach(own, EPOCH_MAX + 1));
        assert!(epoch_within_reach(own, 1) && epoch_within_reach(own, own));
        assert!(epoch_within_reach(EPOCH_MAX, EPOCH_MAX));
    }

    #[test]
    #[should_panic(expected = "an epoch tag is in")]
    fn a_zero_tag_is_refused() {
        epoch_after(1, 0);
    }

    #[test]
    fn histories_fork_where_either_one_first_left_their_last_common_epoch() {
        // Same history, or a standby still in an epoch the primary left later.
        check(&[], &[], true, Fork::None);
        check(&[(5, 10)], &[(5, 10)], true, Fork::None);
        check(&[(5, 10)], &[], true, Fork::At(Lsn(10)));
        // The standby promoted itself and the primary never saw it.
        check(&[], &[(5, 10)], true, Fork::At(Lsn(10)));
        // Two standbys promoted from one epoch: whichever promoted earlier sets the fork, both ways.
        check(&[(9, 30)], &[(5, 10)], true, Fork::At(Lsn(10)));
        check(&[(5, 10)], &[(9, 30)], true, Fork::At(Lsn(10)));
        // After a common epoch.
        check(&[(3, 4), (9, 30)], &[(3, 4), (5, 10)], true, Fork::At(Lsn(10)));
        check(&[(3, 4), (5, 10), (9, 30)], &[(3, 4), (5, 10)], true, Fork::At(Lsn(30)));
        // One epoch number at two LSNs is two epochs (a tag collision): the earlier parts them.
        check(&[(5, 12)], &[(5, 10)], true, Fork::At(Lsn(10)));
    }

    #[test]
    fn a_tail_of_a_history_is_matched_from_its_first_entry() {
        check(&[(3, 4), (5, 10), (9, 30)], &[(5, 10)], false, Fork::At(Lsn(30)));
        check(&[(3, 4), (5, 10)], &[(5, 10), (7, 20)], false, Fork::At(Lsn(20)));
        check(&[(3, 4), (5, 10)], &[(5, 10)], false, Fork::None);
        check(&[(3, 4), (5, 10)], &[(6, 10)], false, Fork::Unknown);
        // An empty tail is a complete empty history.
        check(&[(3, 4)], &[], false, Fork::At(Lsn(4)));
    }
}
