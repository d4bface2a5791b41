//! Raw bytes as a sensor's UDP uplink frame (anyone in radio range or on the LAN can send one),
//! through the parser and the authentication an edge holding the device's key applies.
#![no_main]
use agora_wire::radio::frame::{
    DEFAULT_COUNTER_WINDOW, DeviceKey, FRAME_V2_LEN, FRAME_V2_MAGIC, authenticate, check_mic,
    parse_uplink, reading, seal_frame,
};
use agora_wire::radio::{FRAME_LEN, FRAME_MAGIC, FrameError};
use libfuzzer_sys::fuzz_target;

const KEY: DeviceKey = DeviceKey([7; 32]);

fuzz_target!(|data: &[u8]| {
    match parse_uplink(data) {
        Ok(up) => {
            let (magic, len) = if up.signed {
                (FRAME_V2_MAGIC, FRAME_V2_LEN)
            } else {
                (FRAME_MAGIC, FRAME_LEN)
            };
            assert_eq!(data.len(), len);
            assert_eq!(data[0], magic);
            assert_eq!(up.device.to_le_bytes(), data[1..5]);
            assert_eq!(up.seq.to_le_bytes(), data[5..9]);
            // What a service receives is always a v1 reading of the same device and counter.
            let r = reading(data).expect("a parsed frame has a reading");
            assert_eq!(r[0], FRAME_MAGIC);
            assert_eq!(r[1..FRAME_LEN], data[1..FRAME_LEN]);
            // Under a key, only a frame whose MIC is the key's passes, and then it is exactly
            // the frame sealing its own body would give.
            if let Ok(ok) = authenticate(data, Some(&KEY), None, DEFAULT_COUNTER_WINDOW) {
                assert!(ok.verified);
                let mut payload = [0u8; 7];
                payload.copy_from_slice(&data[9..FRAME_LEN]);
                assert_eq!(seal_frame(&KEY, up.device, up.seq, payload)[..], data[..]);
            }
            // Without a key, anything well formed passes unverified (hearsay).
            let heard = authenticate(data, None, None, DEFAULT_COUNTER_WINDOW).expect("hearsay");
            assert!(!heard.verified);
            // A counter that does not increase is refused under a key, whatever the MIC.
            assert!(authenticate(data, Some(&KEY), Some(up.seq), DEFAULT_COUNTER_WINDOW).is_err());
        }
        Err(FrameError::Length(n)) => {
            assert!(check_mic(&KEY, data).is_err());
            assert!(n != FRAME_LEN || data.first() != Some(&FRAME_MAGIC));
        }
        Err(FrameError::Magic(m)) => assert!(m != FRAME_MAGIC && m != FRAME_V2_MAGIC),
    }
});
