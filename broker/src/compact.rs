//! Growth for the small vectors a session adds to (its subscriptions, a
//! trie node's children and subscribers): `Vec::push` reserves room for four
//! items at once, which for the one subscription an idle terminal holds is
//! three items' worth of memory per session, paid a million times.

/// Pushes `item`, growing `vec` by exactly one while it holds fewer than
/// four items, and as `Vec::push` does (doubling) after that, so long lists
/// still grow in amortised constant time.
pub(crate) fn push<T>(vec: &mut Vec<T>, item: T) {
    if vec.len() == vec.capacity() && vec.len() < 4 {
        vec.reserve_exact(1);
    }
    vec.push(item);
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_vectors_grow_by_one_and_large_ones_double() {
        let mut v = Vec::new();
        super::push(&mut v, 1u64);
        assert_eq!(v.capacity(), 1);
        for i in 2..=4 {
            super::push(&mut v, i);
            assert_eq!(v.capacity(), i as usize);
        }
        super::push(&mut v, 5);
        assert!(v.capacity() >= 8, "doubles past four: {}", v.capacity());
    }
}
