//! An iterative CBOR nesting check, run on peer bytes before serde_cbor decodes them.
//!
//! serde_cbor recurses once per array, map or tag level and stops at 128 levels; a
//! `MarketMessage` with an unknown field holding 127 nested arrays needed 512-768 KiB of stack
//! in a debug build (measured with threads of fixed stack sizes), a third of a 2 MiB async
//! worker's stack. Our messages nest about 8 levels, so [`MAX_NESTING`] refuses deeper input
//! without recursing. (`agora-storage` has the same check for its blocks; the crates may not
//! depend on each other.)

/// Deepest CBOR nesting accepted in a market message or envelope.
pub const MAX_NESTING: usize = 32;

/// Most items (of any kind) scanned in one message.
const MAX_ITEMS: u64 = 1 << 20;

/// Why bytes were refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NestingError {
    /// The bytes end inside an item.
    #[error("CBOR truncated at byte {at}")]
    Truncated {
        /// Offset of the item that does not fit.
        at: usize,
    },
    /// Arrays, maps and tags nest deeper than allowed.
    #[error("CBOR nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// More items than a message can hold.
    #[error("CBOR holds over {MAX_ITEMS} items")]
    TooManyItems,
}

/// Checks that the CBOR item at the front of `bytes` nests at most `max_depth` levels of arrays,
/// maps and tags. Indefinite lengths count as one level each; trailing bytes are not examined.
pub fn check_nesting(bytes: &[u8], max_depth: usize) -> Result<(), NestingError> {
    let mut at = 0usize;
    // Items still to read at each open level (`None`: indefinite, until a break byte).
    let mut open: Vec<Option<u64>> = vec![Some(1)];
    let mut visited: u64 = 0;
    while let Some(left) = open.last_mut() {
        match left {
            Some(0) => {
                open.pop();
                continue;
            }
            Some(n) => *n -= 1,
            None if bytes.get(at) == Some(&0xff) => {
                at += 1;
                open.pop();
                continue;
            }
            None => {}
        }
        visited += 1;
        if visited > MAX_ITEMS {
            return Err(NestingError::TooManyItems);
        }
        let first = *bytes.get(at).ok_or(NestingError::Truncated { at })?;
        let (major, info) = (first >> 5, first & 0x1f);
        let width = match info {
            0..=23 => 0,
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            31 => {
                at += 1;
                // Indefinite strings hold chunks, arrays and maps items: one more level.
                if major == 7 || open.len() > max_depth {
                    return Err(NestingError::TooDeep { max: max_depth });
                }
                open.push(None);
                continue;
            }
            _ => return Err(NestingError::Truncated { at }),
        };
        let head = bytes
            .get(at + 1..at + 1 + width)
            .ok_or(NestingError::Truncated { at })?;
        let arg = if width == 0 {
            u64::from(info)
        } else {
            head.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b))
        };
        at += 1 + width;
        let items = match major {
            2 | 3 => {
                let end = usize::try_from(arg)
                    .ok()
                    .and_then(|len| at.checked_add(len))
                    .filter(|end| *end <= bytes.len())
                    .ok_or(NestingError::Truncated { at })?;
                at = end;
                continue;
            }
            4 => arg,
            5 => arg.saturating_mul(2),
            6 => 1,
            _ => continue,
        };
        if items > 0 {
            if open.len() > max_depth {
                return Err(NestingError::TooDeep { max: max_depth });
            }
            open.push(Some(items));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn measures_depth_and_refuses_deep_or_truncated_input() {
        // [[1, {"a": [2]}], 42(h'')] nests 4 levels.
        let doc = [
            0x82, 0x82, 0x01, 0xa1, 0x61, b'a', 0x81, 0x02, 0xd8, 0x2a, 0x40,
        ];
        assert_eq!(check_nesting(&doc, 4), Ok(()));
        assert_eq!(
            check_nesting(&doc, 3),
            Err(NestingError::TooDeep { max: 3 })
        );
        // Indefinite array of an indefinite map: 2 levels.
        let indef = [0x9f, 0xbf, 0x61, b'k', 0x01, 0xff, 0xff];
        assert_eq!(check_nesting(&indef, 2), Ok(()));
        assert!(check_nesting(&indef, 1).is_err());
        assert!(check_nesting(&[0x82, 0x01], 4).is_err(), "truncated");
        assert!(check_nesting(&[0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 4).is_err());
        assert_eq!(check_nesting(&[0x80], 0), Ok(()));
    }

    #[test]
    fn a_million_levels_are_refused_on_a_small_stack() {
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| {
                for open in [0x81u8, 0xa1, 0xc1, 0x9f] {
                    assert_eq!(
                        check_nesting(&vec![open; 1 << 20], MAX_NESTING),
                        Err(NestingError::TooDeep { max: MAX_NESTING })
                    );
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
