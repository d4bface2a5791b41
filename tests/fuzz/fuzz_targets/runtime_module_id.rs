//! Raw bytes as a module id, as text (image records, API requests) and as a binary CID.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agora_runtime::fuzz::module_id_text(data);
    agora_runtime::fuzz::module_id_bytes(data);
});
