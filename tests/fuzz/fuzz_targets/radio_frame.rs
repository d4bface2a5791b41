//! Raw bytes as a sensor's 16-byte UDP uplink frame (anyone on the LAN can send one).
#![no_main]
use agora_wire::radio::{FRAME_LEN, FRAME_MAGIC, FrameError, parse_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_frame(data) {
        Ok((device, seq)) => {
            assert_eq!(data.len(), FRAME_LEN);
            assert_eq!(data[0], FRAME_MAGIC);
            assert_eq!(device.to_le_bytes(), data[1..5]);
            assert_eq!(seq.to_le_bytes(), data[5..9]);
        }
        Err(FrameError::Length(n)) => assert_ne!(n, FRAME_LEN),
        Err(FrameError::Magic(m)) => assert_ne!(m, FRAME_MAGIC),
    }
});
