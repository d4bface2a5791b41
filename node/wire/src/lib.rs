//! What crosses the wire between agora nodes: the signed, versioned [`Envelope`] and its codec,
//! the gossip topics, and the body of every message a node sends inside an envelope — deal
//! signing ([`deal::DealMsg`]), block sync ([`sync::SyncMsg`]), sensor-radio checkpoints and
//! replay ([`radio`]), proof-of-storage ([`storage::StorageRpc`]) and uptime probes ([`probe::ProbeMsg`]). It is also where the node
//! reads the wall clock ([`now_ms`]); every other node crate takes time from here.
//!
//! Owns: encoding, size limits and signature checks of everything a peer can send, so decoders
//! can be fuzzed without a swarm. May depend on the pure crates (`agora-market`,
//! `agora-contracts`) and on `agora-storage` for its challenge types; never on libp2p, the
//! consensus engine or any other node crate. Market messages are `agora_market` types.
#![forbid(unsafe_code)]

pub mod codec;
pub mod deal;
pub mod probe;
pub mod radio;
pub mod rtt;
pub mod storage;
pub mod sync;
pub mod topics;

pub use codec::{
    CodecError, Envelope, GOSSIP_MAX_SKEW_MS, Kind, MAX_GOSSIP_BYTES, MAX_RPC_BYTES, WIRE_VERSION,
};

/// Milliseconds since the Unix epoch from the system clock (the pure crates take time as input;
/// this is where the node reads it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}

/// Most bytes of a reason a peer gives (a refusal's text) that this node keeps, logs or shows.
pub const MAX_PEER_REASON: usize = 256;

/// `text` cut to at most `max` bytes at a character boundary, with `…` when cut: for text a
/// peer chose (a refusal's reason may be megabytes) before it is kept, logged or shown.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &text[..end]))
}

/// `text` with every control character (C0, DEL, C1: escape sequences, newlines, carriage
/// returns) written as `\u{..}`, for a terminal or a log line: a peer's text (an agent string,
/// a refusal's reason, a device's name) could clear the operator's screen, fake table rows or
/// forge log lines (found by a read-only audit in session 49).
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
pub fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod clip_tests {
    #[test]
    fn printable_escapes_control_characters_only() {
        assert_eq!(super::printable("plain é"), "plain é");
        assert_eq!(
            super::printable("\u{1b}[2J\nX\r\u{9b}\u{7f}"),
            "\\u{1b}[2J\\u{a}X\\u{d}\\u{9b}\\u{7f}"
        );
    }

    #[test]
    fn clip_cuts_at_a_character_boundary() {
        assert_eq!(super::clip("short", 10), "short");
        assert_eq!(super::clip("abcdef", 3), "abc…");
        // 'é' is two bytes: a cut inside it moves back.
        assert_eq!(super::clip("aé", 2), "a…");
        assert_eq!(
            super::clip(&"x".repeat(1 << 20), 256).len(),
            256 + '…'.len_utf8()
        );
    }
}
