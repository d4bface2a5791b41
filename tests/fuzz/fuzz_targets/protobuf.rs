//! The protobuf field reader and varint codecs under dag-pb, UnixFS and bitswap.
#![no_main]

use agora_storage::protobuf::{Reader, Value, get_varint, put_varint, read_varint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = Reader::new(data, "fuzz");
    let mut fields = 0usize;
    while let Ok(Some((_, value))) = reader.next_field() {
        fields += 1;
        if let Value::Bytes(bytes) = value {
            assert!(bytes.len() < data.len());
        }
    }
    // Every field takes at least two bytes (key and value).
    assert!(fields <= data.len() / 2);
    if let Ok((value, used)) = get_varint(data, "fuzz") {
        assert!(used <= 10 && used <= data.len());
        let mut canonical = Vec::new();
        put_varint(&mut canonical, value);
        assert!(canonical.len() <= used);
        assert_eq!(
            get_varint(&canonical, "fuzz").ok(),
            Some((value, canonical.len()))
        );
        let mut stream = data;
        assert_eq!(read_varint(&mut stream, "fuzz").ok(), Some(Some(value)));
        assert_eq!(stream.len(), data.len() - used);
    } else {
        let mut stream = data;
        assert!(!matches!(read_varint(&mut stream, "fuzz"), Ok(Some(_))));
    }
});
